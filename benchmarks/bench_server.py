"""The team's store against the local one: the S16 stacked sweep into sqlite and into
`sweeplab server` (PostgreSQL + mlflow basic-auth on 127.0.0.1), side by side, and metric
values per second written to sqlite, the server, and PostgreSQL directly.

  s16     python -m runner -m hydra/launcher=stacked experiment=lenet_clip dataset=mnist_5k
              optimizer.lr=0.00005,0.0005,0.005,0.05 clipping=none,value,norm,global_norm
  values  one run, VALUES metric values in batches of 1000 through runner.bulk_metrics, as a
          run's outbox sends them (sqlite, direct PostgreSQL: one statement a batch; server: a
          REST log-batch request a batch)

Each sweep runs REPEAT times per store, alternated; the table shows medians. The server is
started once in a temporary folder (needs `apt-get install postgresql` and
`pip install -e .[postgres]`; the admin password is made up here). Target: the server's
overhead on the sweep's wall time <= 10 %.

Usage (`make bench-server` runs the first line; BENCH_SERVER_ARGS="--steps 20 --values 5000 --repeat 1"
for a quick check):
  .venv/bin/python benchmarks/bench_server.py
"""
import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.bench_sweep import WORKLOADS, runner_env  # noqa: E402

PASSWORD = "bench-" + secrets.token_hex(8)


def start_server(folder, port, workers=None):
    env = dict(runner_env(), MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD)
    os.makedirs(folder, exist_ok=True)
    extra = ["--workers", str(workers)] if workers else []
    proc = subprocess.Popen([sys.executable, "-m", "runner", "server", "--dir", folder,
                             "--port", str(port), *extra], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in proc.stdout:
        if "tracking URI" in line:
            return proc
    raise SystemExit(f"sweeplab server did not start (exit {proc.wait()})")


def sweep(uri, folder, steps):
    command = [sys.executable, "-m", "runner", *WORKLOADS["s16"][0], "hydra/launcher=stacked",
               f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={folder}/sweep"]
    if steps:
        command.append(f"train.steps={steps}")
    env = dict(runner_env(), MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return time.perf_counter() - started, done.returncode


def values_per_second(uri, count):
    from runner import bulk_metrics, store

    client = store.open_client(uri)
    run_id = client.create_run(store.ensure_experiment(client, "bench-values", None)).info.run_id
    now = int(time.time() * 1000)
    rows = [["loss", float(i), now, i] for i in range(count)]
    started = time.perf_counter()
    for i in range(0, count, 1000):
        bulk_metrics.log_metrics(client, run_id, rows[i:i + 1000])
    return count / (time.perf_counter() - started)


def tree_cpu(pid):
    """CPU seconds used so far by `pid` and every process below it (the server's PostgreSQL
    and mlflow workers), from /proc."""
    from runner import procfs
    parent, used = {}, {}
    for process, fields in procfs.processes():
        parent[process] = int(fields[procfs.PPID])
        used[process] = procfs.cpu_seconds(fields)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += used.get(current, 0.0)
        todo += [child for child, up in parent.items() if up == current]
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, help="override train.steps of s16")
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--port", type=int, default=5099)
    parser.add_argument("--repeat", type=int, default=3, help="sweeps per store, alternated")
    parser.add_argument("--workers", type=int, help="sweeplab server --workers (its default "
                        "if not given)")
    args = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="bench-server-")
    os.chmod(base, 0o755)  # PostgreSQL's OS user enters it when we are root
    server_dir = os.path.join(base, "server")
    proc = start_server(server_dir, args.port, args.workers)
    try:
        from runner import server
        uri = f"http://127.0.0.1:{args.port}"
        import psycopg
        with psycopg.connect(host=server.socket_dir(server_dir), autocommit=True,
                             user=server.role_name(server.pg_user()), dbname="postgres") as c:
            c.execute("CREATE DATABASE bench_direct")
        direct = server.store_uri(server_dir, "bench_direct")
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD)
        walls = {"sqlite": [], "server": []}
        for repeat in range(args.repeat):  # alternated, so a slower minute hits both
            for name, store_uri in [("sqlite", f"sqlite:///{base}/sqlite/mlflow.db"),
                                    ("server", uri)]:
                folder = os.path.join(base, f"s16-{name}-{repeat}")
                os.makedirs(folder)
                server_cpu = tree_cpu(proc.pid)
                wall, code = sweep(store_uri, folder, args.steps)
                # (processes that ended during the sweep take their CPU time with them)
                server_cpu = max(0.0, tree_cpu(proc.pid) - server_cpu)
                walls[name].append(wall)
                print(f"  repeat {repeat + 1}: {name:6s} {wall:6.1f} s  exit {code}  server "
                      f"CPU during it {server_cpu:5.1f} s", flush=True)
        base_wall = statistics.median(walls["sqlite"])
        print(f"\ns16 stacked sweep (16 jobs{f', {args.steps} steps' if args.steps else ''}), "
              f"median of {args.repeat}")
        for name, times in walls.items():
            wall = statistics.median(times)
            print(f"  {name:8s} {wall:7.1f} s  x{wall / base_wall:.2f}  "
                  f"(runs: {', '.join(f'{t:.1f}' for t in times)})")
        print(f"\nmetric values per second ({args.values} values, batches of 1000)")
        for name, store_uri in [("sqlite", f"sqlite:///{base}/values.db"), ("server", uri),
                                ("postgres", direct)]:
            print(f"  {name:8s} {values_per_second(store_uri, args.values):10.0f} /s")
    finally:
        proc.terminate()
        proc.wait(120)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
