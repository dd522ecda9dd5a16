"""A sweep's answer, from its MLflow parent run: a map, curves and a table, logged back on the
parent (`report/`), and `sweeplab report [SWEEP]` to regenerate and print it at any time.

collect (MLflow children -> JobRecord) -> results (axes, configs = replicate groups with their
statistics, grid, ranking) -> report_plots (figures) -> summary.csv, markdown, self-contained
HTML -> artifacts on the parent run. docs/replicates.md explains the statistics.
"""
import argparse
import base64
import csv
import html
import io
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError
from rich.table import Table

from runner import outcome, report_plots, stats, store, tags
from runner.config import ConfigError
from runner.results import (CURVES, METRICS, SEED, SUMMARY_STATS, Cell, JobRecord, best_first,
                            best_step, config_axes, configs, default_metric, is_number, ranked,
                            replicates, summary_rows, swept_axes)

REPORT_DIR = "report"  # artifact folder on the parent run
MAP_PNG, CURVES_PNG, HTML_FILE, MD_FILE, SUMMARY_CSV = (
    "sweep_map.png", "sweep_curves.png", "report.html", "report.md", "summary.csv")
ADD_SEEDS = "seed=0,1,2,3,4 (or seed=range(5))"  # what to add to a sweep's command line
LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves a local store
# MLflow 3 opens an experiment, and a run page reached from it, in its GenAI layout; this query
# switches the sidebar to "Model training", whose Runs page is the runs table.
MODEL_TRAINING = "?workflowType=machine_learning"


# ---------------------------------------------------------------- from the store

def _children(client: MlflowClient, parent: Run) -> List[Run]:
    """Every child run of the parent, in the order they started (all result pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{tags.PARENT_RUN}` = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _unclamp(value: float) -> float:
    """MLflow stores +-inf as +-float max; give the infinity back so it reads as not finite."""
    return math.copysign(math.inf, value) if abs(value) >= sys.float_info.max else value


def collect(client: MlflowClient, parent_run_id: str) -> List[JobRecord]:
    """The sweep's jobs as records: params, outcome tag, final metrics, curve histories."""
    records = []
    for child in _children(client, client.get_run(parent_run_id)):
        metrics = {key: _unclamp(value) for key, value in child.data.metrics.items()}
        histories = {key: [(m.step, _unclamp(m.value)) for m in sorted(
            client.get_metric_history(child.info.run_id, key), key=lambda m: m.step)]
            for key in CURVES if key in metrics}
        status = child.info.status
        records.append(JobRecord(
            run_id=child.info.run_id, name=child.info.run_name or child.info.run_id[:8],
            params=dict(child.data.params), metrics=metrics, histories=histories,
            outcome=child.data.tags.get(tags.OUTCOME,
                                        tags.OUTCOME_RUNNING if status == "RUNNING" else "?"),
            status=status, tags=dict(child.data.tags)))
    return records


# ---------------------------------------------------------------- the table

def table(records: Sequence[JobRecord], metric: str) -> Tuple[List[str], List[List[str]]]:
    """(header, rows) of every job, best first: the swept values, the metric, the outcome,
    the step of the best validation value and the step it diverged at."""
    axes = swept_axes(records)
    curve = METRICS[metric].curve
    header = ["#", "run", *axes, metric, "outcome", f"best {curve} at", "diverged at"]
    rows = []
    for rank, record in enumerate(ranked(records, metric), 1):
        best = best_step(record, curve)
        value = record.value(metric)
        rows.append([str(rank), record.name, *(record.params.get(a, "-") for a in axes),
                     f"{value:.4g}" if math.isfinite(value) else "-", record.outcome,
                     "-" if best is None else str(best),
                     "-" if record.diverged_at is None else str(record.diverged_at)])
    return header, rows


def _headline(parent: Run, records: Sequence[JobRecord], metric: str) -> List[str]:
    """A few lines that say which sweep this is and what the report ranks by, and why."""
    counts: Dict[str, int] = {}
    for record in records:
        counts[record.outcome] = counts.get(record.outcome, 0) + 1
    axes = swept_axes(records)
    spec = METRICS[metric]
    def values(key: str) -> List[str]:  # numbers ascending, anything else after them
        found = {r.params.get(key, "") for r in records} - {""}
        return sorted(found, key=lambda v: (0, float(v), v) if is_number(v) else (1, 0.0, v))

    about = spec.about.format(eval_size="/".join(values("train.eval_size")) or
                              "train.eval_size")
    seeds = values(SEED)
    return [f"sweep run {parent.info.run_id} (experiment {parent.info.experiment_id}): "
            f"{parent.data.tags.get(tags.OVERRIDES) or '(defaults)'}",
            f"jobs: {len(records)} ({', '.join(f'{n} {o}' for o, n in counts.items())}); "
            f"swept: {' x '.join(axes) or 'nothing (repeats)'}; "
            f"seeds: {', '.join(seeds) if len(seeds) > 1 else seeds[0] if seeds else '-'}",
            f"ranked by {metric} ({spec.direction}): {about}"]


def replicate_note(cells: Sequence[Cell]) -> List[str]:
    """What the statistics mean, in a few lines; with one seed per config, that they cannot
    judge a small difference, and how to add seeds."""
    if replicates(cells) <= 1:
        return ["One seed per config: every number is one run, an anecdote. A difference "
                "smaller than the seed-to-seed spread cannot be judged, and one run cannot "
                "measure that spread.",
                f"Add seeds: rerun the sweep with {ADD_SEEDS} on the command line; each "
                f"config then gets n, mean, sd, a 95 % interval and a test against the best "
                f"(docs/replicates.md)."]
    tested = sum(c.verdict.verdict in (stats.TIED, stats.DIFFERENT) for c in cells)
    return [f"A config is every swept key but seed; n = its runs with a finite value (a "
            f"diverged run's last value predates its blow-up: it counts as an outcome, not a "
            f"value). mean ± half of the 95 % t-interval of the mean; sd across seeds.",
            f"best = the best mean among configs with n >= {stats.MIN_N}. tied = cannot be "
            f"told apart from the best: two-sided paired t-test (same seeds) or Welch's "
            f"t-test, Holm-corrected over {tested} comparison{'s' * (tested != 1)}, α = "
            f"{stats.ALPHA:g}; untestable = n < {stats.MIN_N}. Tied is not 'equal': more "
            f"seeds narrow the intervals (docs/replicates.md)."]


def answer(cells: Sequence[Cell], axes: Sequence[str], metric: str) -> List[str]:
    """The sweep's answer in words: the best config and the configs that cannot be told apart
    from it (with one seed per config: the lowest single runs, said to be anecdotes)."""
    ranked = [c for c in best_first(cells) if math.isfinite(c.summary.mean)]
    if not ranked:
        return [f"answer: no config has a finite {metric}"]

    def name(cell: Cell) -> str:
        return ", ".join(f"{a}={cell.axis_value(a)}" for a in axes) or "the config"

    def value(cell: Cell) -> str:
        s = cell.summary
        spread = f" ± {_number(s.half_width)}" if s.n > 1 and math.isfinite(s.half_width) else ""
        return f"{metric} {_number(s.mean)}{spread}, n={s.n}"

    if replicates(cells) <= 1:
        return [f"answer (one seed: an anecdote, not a ranking): lowest {name(ranked[0])} "
                f"({value(ranked[0])}); next {', '.join(name(c) for c in ranked[1:3]) or '-'}"]
    best = [c for c in ranked if c.verdict.verdict == stats.BEST]
    tied = [c for c in ranked if c.verdict.verdict == stats.TIED]
    lines = [f"answer: best {name(c)} ({value(c)})" for c in best[:1]]
    if tied:
        lines.append(f"        cannot be told apart from it at these seeds ({len(tied)}): "
                     + "; ".join(f"{name(c)} ({value(c)})" for c in tied))
    elif best:
        lines.append("        every other config differs from it (Holm-corrected, α = "
                     f"{stats.ALPHA:g})")
    return lines or [f"answer: no config has n >= {stats.MIN_N}; add seeds ({ADD_SEEDS})"]


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "-"


def _versus_best(cell: Cell) -> str:
    """The config against the best, in words: best / tied / differs / untestable."""
    v = cell.verdict
    if v.verdict in (stats.TIED, stats.DIFFERENT):
        test = "paired" if v.test == stats.PAIRED else "Welch"
        word = "tied" if v.verdict == stats.TIED else "differs"
        return f"{word} ({test}, p_holm {v.p_holm:.2g})"
    if v.verdict == stats.UNTESTABLE:
        return f"untestable (n={cell.summary.n})" if cell.summary.n < stats.MIN_N else \
            "untestable (best has n<2)"
    return v.verdict


def summary_table(cells: Sequence[Cell], axes: Sequence[str]) -> Tuple[List[str], List[List[str]]]:
    """(header, rows) of the summary, one row per config, best first, as people read it:
    mean ± half of the 95 % interval, sd, outcome counts, the verdict against the best."""
    header = [*axes, "n", "mean", "± 95 %", "sd", "ok", "diverged", "collapsed", "vs best"]
    rows = []
    for cell in best_first(cells):
        s = cell.summary
        rows.append([*(cell.axis_value(a) for a in axes), f"{s.n}/{cell.runs}",
                     _number(s.mean), _number(s.half_width), _number(s.sd),
                     str(cell.count(outcome.OK)), str(cell.count(outcome.DIVERGED)),
                     str(cell.count(outcome.COLLAPSED)), _versus_best(cell)])
    return header, rows


def summary_csv(cells: Sequence[Cell], axes: Sequence[str]) -> str:
    """`report/summary.csv`: one row per config, every number at full precision; the swept
    keys (minus seed) named by their keys, then runner.results.SUMMARY_STATS."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*axes, *SUMMARY_STATS], lineterminator="\n")
    writer.writeheader()
    for row in summary_rows(cells, axes):
        writer.writerow({k: repr(float(v)) if isinstance(v, float) else v
                         for k, v in row.items()})
    return buffer.getvalue()


OUTCOME_NOTE = (
    f"outcome: diverged = a loss or gradient went NaN/Inf, the run stopped at that step; "
    f"collapsed = finite but learned nothing: final val_loss >= {outcome.LOSS_RATIO} x its "
    f"step-0 val_loss, or test_acc <= {outcome.CHANCE_FACTOR} / classes (language model: "
    f"valid perplexity >= vocab_size ** {outcome.LOSS_RATIO}).")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows])


def markdown(parent: Run, records: Sequence[JobRecord], metric: str,
             cells: Optional[Sequence[Cell]] = None) -> str:
    """The report as markdown, the PNGs and summary.csv referenced beside it."""
    cells = configs(records, metric) if cells is None else cells
    lines = [f"# Sweep report: {parent.info.run_name}", ""]
    lines += [f"- {line}" for line in _headline(parent, records, metric)]
    lines += ["", *replicate_note(cells), "", f"![map]({MAP_PNG})", "",
              f"![curves]({CURVES_PNG})", "", f"## Configs, best first ([{SUMMARY_CSV}]"
              f"({SUMMARY_CSV}))", ""]
    lines += _md_table(*summary_table(cells, config_axes(records)))
    lines += ["", "## Every run, best first", ""]
    lines += _md_table(*table(records, metric))
    return "\n".join(lines + ["", OUTCOME_NOTE, ""])


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
img{max-width:100%;display:block;margin:1em 0}
table{border-collapse:collapse;font-size:14px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0}tr.diverged td{background:#e6e6e6}
tr.collapsed td{background:#fbe3e3}td.outcome{font-weight:bold}
tr.diverged td.outcome{color:#555}tr.collapsed td.outcome{color:#b2182b}
.note{color:#555;font-size:13px;max-width:60em}"""


def html_page(parent: Run, records: Sequence[JobRecord], metric: str,
              pngs: Dict[str, bytes], cells: Optional[Sequence[Cell]] = None) -> str:
    """The report as one HTML file: PNGs embedded as base64, so it opens anywhere."""
    cells = configs(records, metric) if cells is None else cells
    header, rows = table(records, metric)
    outcome_col = header.index("outcome")
    esc = html.escape
    summary_header, summary = summary_table(cells, config_axes(records))
    configs_html = ("<h2>Configs, best first</h2><table class='configs'><tr>"
                    + "".join(f"<th>{esc(h)}</th>" for h in summary_header) + "</tr>"
                    + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                              for row in summary) + "</table>")
    images = "".join(f'<img alt="{esc(name)}" src="data:image/png;base64,'
                     f'{base64.b64encode(data).decode()}">' for name, data in pngs.items())
    body = "".join(
        f'<tr class="{esc(row[outcome_col])}">' + "".join(
            f'<td class="outcome">{esc(c)}</td>' if k == outcome_col else f"<td>{esc(c)}</td>"
            for k, c in enumerate(row)) + "</tr>" for row in rows)
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>Sweep report: {esc(parent.info.run_name)}</title><style>{_CSS}</style>"
            f"</head><body><h1>Sweep report</h1><ul>"
            + "".join(f"<li>{esc(line)}</li>" for line in _headline(parent, records, metric))
            + "</ul>" + "".join(f"<p class='note'>{esc(line)}</p>"
                                for line in replicate_note(cells))
            + f"{images}{configs_html}"
            + "<h2>Every run, best first</h2><table class='runs'><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in header)
            + f"</tr>{body}</table><p class='note'>{esc(OUTCOME_NOTE)}</p></body></html>\n")


# ---------------------------------------------------------------- logged on the parent

@dataclass
class ReportLocation:
    """Where a logged report lives: its artifact URI, and the folder when the store is local."""
    run_id: str
    experiment_id: str
    metric: str
    artifact_uri: str
    local_dir: Optional[str]
    files: List[str]


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def log_report(client: MlflowClient, parent_run_id: str,
               metric: Optional[str] = None) -> ReportLocation:
    """Draw and log `report/{sweep_map.png, sweep_curves.png, summary.csv, report.html,
    report.md}` on the sweep's parent run (replacing an older report); metric None = the
    sweep's default (its task's ranking metric: val_loss_tail, or valid_loss for a
    language model). Raises ValueError without jobs."""
    records = collect(client, parent_run_id)
    if not records:
        raise ValueError(f"sweep {parent_run_id} has no jobs")
    return write_report(client, client.get_run(parent_run_id), records,
                        metric or default_metric(records) or "val_loss")


def write_report(client: MlflowClient, parent: Run, records: Sequence[JobRecord],
                 metric: str, cells: Optional[Sequence[Cell]] = None) -> ReportLocation:
    """Render the figures once, embed them in the HTML, log the five files on the parent."""
    cells = configs(records, metric) if cells is None else cells
    pngs = {MAP_PNG: _png(report_plots.sweep_map(records, metric)),
            CURVES_PNG: _png(report_plots.sweep_curves(records, metric))}
    texts = {SUMMARY_CSV: summary_csv(cells, config_axes(records)),
             HTML_FILE: html_page(parent, records, metric, pngs, cells),
             MD_FILE: markdown(parent, records, metric, cells)}
    with tempfile.TemporaryDirectory(prefix="sweeplab-report-") as folder:
        for name, data in pngs.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        for name, text in texts.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                f.write(text)
        client.log_artifacts(parent.info.run_id, folder, REPORT_DIR)
    client.set_tag(parent.info.run_id, tags.REPORT_METRIC, metric)
    artifact_uri = f"{parent.info.artifact_uri.rstrip('/')}/{REPORT_DIR}"
    local = store.local_path(artifact_uri)
    return ReportLocation(parent.info.run_id, parent.info.experiment_id, metric, artifact_uri,
                          local if local and os.path.isdir(local) else None,
                          [f"{REPORT_DIR}/{name}" for name in (*pngs, *texts)])


# ---------------------------------------------------------------- `sweeplab report`

def _newest(client: MlflowClient, filter_string: str) -> Optional[Run]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    found = client.search_runs(experiments, filter_string, max_results=1,
                               order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def find_sweep(client: MlflowClient, sweep: Optional[str], uri: str) -> Run:
    """The sweep's parent run: the newest sweep, a run id (a child's leads to its parent),
    or a sweep dir (the newest sweep that ran there)."""
    if not sweep:
        run = _newest(client, f"tags.`{tags.ROLE}` = '{tags.ROLE_SWEEP}'")
        if run is None:
            raise ConfigError(f"SWEEP: no sweep in {store.redact(uri)}; run one (sweeplab -m "
                              f"...) or pass "
                              f"--tracking-uri URI")
        return run
    if os.sep in sweep or os.path.isdir(sweep):
        for folder in dict.fromkeys((os.path.abspath(sweep), os.path.realpath(sweep))):
            run = _newest(client, f"tags.`{tags.SWEEP_DIR}` = '{folder}'")
            if run is not None:
                return run
        raise ConfigError(f"SWEEP: no sweep ran in {os.path.abspath(sweep)} "
                          f"(store {store.redact(uri)}); "
                          f"give a sweep dir such as outputs/sweeps/<date>/<time>, or a run id")
    try:
        run = client.get_run(sweep)
    except MlflowException:
        raise ConfigError(f"SWEEP: no run {sweep!r} in {store.redact(uri)}; give a sweep's "
                          f"parent run id, "
                          f"its sweep dir, or nothing for the newest sweep") from None
    parent = run.data.tags.get(tags.PARENT_RUN)
    if run.data.tags.get(tags.ROLE) != tags.ROLE_SWEEP and parent:
        return client.get_run(parent)  # a job's id: report its sweep
    return run


def ui_url(uri: str, run: Run) -> str:
    """The parent run's page in the MLflow UI: the server itself, or `make ui` locally."""
    # No user or password in a link: the browser asks for the login itself.
    base = store.base_url(uri) if uri.startswith(("http://", "https://")) else LOCAL_UI
    return (f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            f"{MODEL_TRAINING}")


def newest_sweep_links(uri: str, ui: str = LOCAL_UI) -> List[str]:
    """Lines for `make ui` to print: links to the newest sweep in the store at `uri` (its
    experiment's runs table, its parent run, the parent's report), served at `ui`.

    One line saying why when there is no store or no sweep yet; never creates a store and
    never raises on a store that fails to open, so the UI still starts.
    """
    path = store.local_path(uri)
    if path and not os.path.exists(path):
        return [f"No sweep yet: {path} does not exist (`make run` or `sweeplab -m ...` "
                f"makes one)."]
    try:
        parent = _newest(MlflowClient(tracking_uri=uri),
                         f"tags.`{tags.ROLE}` = '{tags.ROLE_SWEEP}'")
    except (MlflowException, SQLAlchemyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return [f"No sweep links: the store {store.redact(uri)} failed to open ({first})."]
    if parent is None:
        return [f"No sweep yet in {store.redact(uri)} (`make run` or `sweeplab -m ...` runs one)."]
    experiment = f"{ui.rstrip('/')}/#/experiments/{parent.info.experiment_id}"
    run_page = f"{experiment}/runs/{parent.info.run_id}"
    return [f"Newest sweep: {parent.info.run_name}",
            f"  runs table:  {experiment}/runs{MODEL_TRAINING}",
            f"  sweep run:   {run_page}{MODEL_TRAINING}",
            f"  its report:  {run_page}/artifacts/{REPORT_DIR}/{HTML_FILE}{MODEL_TRAINING}"]


def print_table(records: Sequence[JobRecord], metric: str, console: Console,
                cells: Optional[Sequence[Cell]] = None) -> None:
    """summary.csv's table in the terminal, one row per config, best first: the best in bold,
    its ties green, failures coloured. `clipping.name` reads `clipping`."""
    cells = configs(records, metric) if cells is None else cells
    axes = config_axes(records)
    header, rows = summary_table(cells, axes)
    styles = {outcome.DIVERGED: "red", outcome.COLLAPSED: "yellow"}
    shown = Table(title=f"{metric} ({METRICS[metric].direction}) per config, best first")
    for k, name in enumerate(header):
        name = name.removesuffix(".name")
        shown.add_column(name, justify="left" if k < len(axes) or name == "vs best"
                         else "right", no_wrap=True)
    for row in rows:
        verdict = row[-1]
        cells_ = [f"[{styles[h]}]{c}[/]" if h in styles and c != "0" else c
                  for h, c in zip(header, row)]
        shown.add_row(*cells_, style="bold" if verdict == stats.BEST else (
            "green" if verdict.startswith("tied") else None))
    console.print(shown)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other bad input
        raise ConfigError(f"{message}; see sweeplab report --help")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sweeplab report",
                     description="Regenerate a sweep's report (map, curves, table), log it "
                                 "on the sweep's parent run and print the table.")
    parser.add_argument("sweep", nargs="?", metavar="SWEEP",
                        help="parent run id or sweep dir; default: the newest sweep")
    parser.add_argument("--metric", default=None,
                        help=f"rank and map by this final metric: {', '.join(METRICS)} "
                             f"(default: val_loss_tail, the mean of the last 10 evaluations, "
                             f"or valid_loss, log perplexity, for a language model)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store; default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///<cwd>/outputs/mlflow.db")
    return parser


def main(argv: Sequence[str]) -> int:
    """`sweeplab report [SWEEP] [--metric M] [--tracking-uri URI]`; returns the exit code."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as done:  # --help
        return int(done.code or 0)
    except ConfigError as err:
        print(f"sweeplab: error: {err}", file=sys.stderr, flush=True)
        return 2
    uri, source = store.resolve(args.tracking_uri, "--tracking-uri")
    try:
        if args.metric is not None and args.metric not in METRICS:
            raise ConfigError(f"--metric: unknown metric {args.metric!r}; use one of "
                              f"{', '.join(METRICS)}")
        store.check(uri, source, write=False)
        client = MlflowClient(tracking_uri=uri)
        parent = find_sweep(client, args.sweep, uri)
        records = collect(client, parent.info.run_id)
        if not records:
            raise ConfigError(f"SWEEP: sweep {parent.info.run_id} ({parent.info.run_name}) "
                              f"has no jobs yet; wait for its first job or pick another sweep")
        metric = args.metric or default_metric(records) or "val_loss"
        if not any(metric in r.metrics for r in records):
            logged = [m for m in METRICS if any(m in r.metrics for r in records)]
            raise ConfigError(f"--metric: no job of this sweep logged {metric}; use one of "
                              f"{', '.join(logged) or '(none yet)'}")
        cells = configs(records, metric)
        where = write_report(client, parent, records, metric, cells)
    except ConfigError as err:
        print(f"sweeplab: error: {err}", file=sys.stderr, flush=True)
        return 2
    except (MlflowException, SQLAlchemyError) as err:  # a store that opens but fails
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        print(f"sweeplab: error: {source}: the MLflow store {store.redact(uri)} failed: "
              f"{first}; point "
              f"--tracking-uri at a working store", file=sys.stderr, flush=True)
        return 2
    # Piped into a file or CI log, rich would assume 80 columns and cut the table's cells.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    for line in _headline(parent, records, metric):
        console.print(line, highlight=False, soft_wrap=True)
    print_table(records, metric, console, cells)
    for line in answer(cells, config_axes(records), metric):
        console.print(line, highlight=False, soft_wrap=True)
    for line in replicate_note(cells):
        console.print(line, highlight=False, soft_wrap=True)
    for name in (MAP_PNG, SUMMARY_CSV, HTML_FILE):
        console.print(f"{name + ':':15}{where.artifact_uri}/{name}", highlight=False,
                      soft_wrap=True)
        if where.local_dir and where.local_dir != where.artifact_uri:
            console.print(f"{'':15}{os.path.join(where.local_dir, name)}", highlight=False,
                          soft_wrap=True)
    console.print(f"MLflow UI: {ui_url(uri, parent)}", highlight=False, soft_wrap=True)
    if not uri.startswith(("http://", "https://")):
        hint = ("make ui" if uri == store.default_uri()
                else f"mlflow ui --backend-store-uri {store.redact(uri)}")
        console.print(f"           (start the UI with: {hint})", highlight=False, soft_wrap=True)
    return 0
