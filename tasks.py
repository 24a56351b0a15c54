"""retrieval-race: invoke tasks. Each is thin: parse options, call the toolkit, print with rich.

    invoke demo                                    # offline end-to-end run on generated data
    invoke race --data PATH [--strategies a,b] [--budget 30m]
    invoke score SUBMISSION --answers answers.json
    invoke leaderboard [--race ID] [--all]         # every run: validation score beside server score
    invoke submit [--file FILE | --best | --run ID] [--group G] [--url U] [--dry-run]
    invoke serve-scorer --answers answers.json     # a local server speaking the course's protocol
    invoke strategies
    invoke download URL [--to data/NAME] [--sha256 HEX]   # resumable; safe unpacking
    invoke prefetch [--strategies a,b]             # weights into the caches, for a race offline
    invoke doctor [--data data]                    # what this machine can do
    invoke show [--run ID | --submission FILE] [--validation] [--worst]   # a run's top-10 as a picture
    invoke report [--race ID]                      # one HTML page: leaderboard, charts, the best run's grids
    invoke test
"""
from __future__ import annotations

import sys
from pathlib import Path

from invoke import task as invoke_task
from rich.markup import escape

from toolkit.machine.cpu_memory import keep_freed_memory_for_reuse
from toolkit.machine import interrupts
from toolkit.machine.command_line import Command, fail as _fail
from toolkit.machine.options import Count, Fraction, Identifier, Port, Seconds, Whole, ZeroOrMore
from toolkit.machine.settings import project_path, project_root
from toolkit.race.config import DEFAULT_STRATEGIES, NOTHING_RACED, OFFLINE_STRATEGIES, RaceConfig

interrupts.exit_promptly_on_interrupt()
keep_freed_memory_for_reuse()  # before any tensor is allocated: ~2x faster CPU forward passes


def task(*args, **options):
    """invoke's @task with this project's command line (toolkit.machine.command_line): --help after every
    task, defaults in the help, numbers read with one line on error, Ctrl-C in one place (`interrupted=`)."""
    return invoke_task(*args, klass=Command, **options)


def _race(data: str, strategies: str, config, leaderboard: str | None = None):
    from retrieval_race import prepare_race
    from toolkit.data.dataset import describe
    from toolkit.machine.console import console, warn
    from toolkit.race.runner import RaceInterrupted, run_race
    from toolkit.views.race import race_summary, race_table
    from toolkit.views.race_console import RaceConsole

    try:
        competition, racers = prepare_race(data, strategies, config)
    except ValueError as error:   # LayoutError is one: a folder, a strategy or a pattern at fault
        raise _fail(str(error)) from None
    console.print(f"[bold]{competition.root}[/bold]: {describe(competition)}")
    for path, reason in competition.ignored[:10]:
        warn(f"ignored {path}: {reason}")
    try:
        result = run_race(competition, racers, config, leaderboard=_leaderboard_file(leaderboard),
                          observer=RaceConsole(live=config.show_progress))
    except RaceInterrupted as interrupted:
        result = interrupted.result
    except ValueError as error:  # a strategy option it does not take, a split it cannot make
        raise _fail(str(error)) from None
    with interrupts.holding_interrupts() as pressed:   # the race is over: what it wrote is told whole
        console.print(race_table(result))
        if result.best is not None and not result.interrupted:
            console.print(race_summary(result, _leaderboard_file(leaderboard)), soft_wrap=True)
    if result.interrupted or pressed:
        raise interrupts.Interrupted(result.kept)
    if result.best is None:
        raise _fail("no strategy finished; see the reasons above")
    return result


@task(help={
    "data": "competition folder: training/<identity>/*, test/query/*, test/gallery/* (train/ and one wrapping folder accepted)",
    "strategies": "comma-separated names with optional options, e.g. face-zs,clip-zs[model=ViT-B-16,pretrained=laion2b_s34b_b88k]",
    "budget": "wall-clock budget with a unit: 90m, 1h30m, 45s (default: none, no limit); strategies that cannot "
              "finish in the time left are skipped",
    "seed": "seed of the validation split",
    "flip": "flip test-time augmentation: auto (validation decides), on or off",
    "rerank": "try query expansion, DBA, k-reciprocal and dual-softmax re-ranking on validation and keep what wins "
              "(--no-rerank: plain nearest neighbours)",
    "workers": "embedding worker processes (default: half the cores to decode; face-zs: one per core)",
    "gallery-pattern": "filename glob marking stylised training images (e.g. '*_s.*'): they take the gallery role in "
                       "validation, as in the test; 'auto' (default) detects a marker in the names, 'none' draws roles at random",
    "held-out": "fraction of training identities held out for validation",
    "submissions": "folder the submission files are written to (default: submissions/ in the project folder)",
    "leaderboard": "leaderboard file the race is recorded in (default: the setting `leaderboard`, leaderboard.db)",
    "cluster": "race the strategies at once on Ray: local (start one here), auto (the `ray start` cluster), "
               "ray://host:10001 (default: none, one after another in this process)",
}, interrupted=NOTHING_RACED)
def race(c, data, strategies=DEFAULT_STRATEGIES, budget=None, seed: Whole = RaceConfig.seed, flip="auto",
         workers: ZeroOrMore | None = None, gallery_pattern=RaceConfig.gallery_pattern,
         held_out: Fraction = RaceConfig.held_out_fraction, submissions=None, rerank=RaceConfig.post_process,
         leaderboard=None, cluster=None):
    """Race strategies on a competition folder; write each one's submission and show validation scores."""
    from toolkit.race.config import race_config

    try:
        config = race_config(budget=budget, seed=seed, flip=flip, workers=workers, gallery_pattern=gallery_pattern,
                             held_out=held_out, submissions=submissions, rerank=rerank, cluster=cluster)
    except ValueError as error:
        raise _fail(escape(str(error))) from None
    _race(data, strategies, config, leaderboard)


@task(positional=["submission"],
      help={"submission": "submission JSON file", "answers": 'answers JSON: {"query": {file: id}, "gallery": {file: id}}'})
def score(c, submission, answers):
    """Competition score of a submission file (600*Top1 + 300*Top5 + 100*Top10), with Top-k and mAP@10."""
    from toolkit.machine.console import console
    from toolkit.retrieval.metrics import AnswersError, load_answers, score_submission
    from toolkit.submit.submission import SubmissionError, load_submission
    from toolkit.views.score import missing_queries_line, score_table

    try:
        entries = load_submission(Path(submission))
        truth = load_answers(answers)
        result = score_submission(entries, truth)
    except (SubmissionError, AnswersError) as error:
        raise _fail(str(error)) from None
    console.print(score_table(str(submission), result))
    console.print(missing_queries_line(len(truth["query"]) - len(entries)) or "", end="")


@task
def strategies(c):
    """List the strategies that can race, and whether their weights are available offline."""
    from strategies import create_strategy, strategy_class, strategy_names
    from toolkit.machine.console import console
    from toolkit.views.strategies import StrategyLine, strategies_table

    lines = []
    for name in strategy_names():
        status = create_strategy(name).weights_status()
        lines.append(StrategyLine(name, strategy_class(name).summary, status.available_offline, status.detail))
    console.print(strategies_table(lines))


@task(help={"data": "where the generated demo competition is written (default: data/demo in the project folder)",
            "strategies": "strategies to race"})
def demo(c, data=None, strategies=OFFLINE_STRATEGIES):
    """Generate a small competition of drawn faces, race the offline strategies on it, score the best."""
    from toolkit.data.synthetic import make_synthetic_competition
    from toolkit.machine.console import console
    from toolkit.race.config import race_config
    from toolkit.retrieval.metrics import load_answers, score_submission
    from toolkit.submit.submission import load_submission
    from toolkit.views.score import test_score_lines

    root = Path(data) if data else project_path("data/demo")
    if not (root / "answers.json").is_file():
        console.print(f"generating a demo competition in {root}")
        make_synthetic_competition(root)
    result = _race(str(root), strategies, race_config())
    truth = load_answers(root / "answers.json")
    scores = {run.label: score_submission(load_submission(run.submission), truth) for run in result.runs if run.submission}
    console.print("\n".join(test_score_lines(result.runs, scores)))


# --- getting ready: data, weights, the machine ----------------------------------------------------


@task(positional=["url"], help={
    "url": "the archive's link: http(s), or a Google Drive share link (https://drive.google.com/file/d/<id>/view)",
    "to": "folder to unpack into (default: data/<name>, the name taken from the link or the server)",
    "sha256": "expected SHA-256 of the archive: a mismatch is an error and the file is not used (default: not checked)",
    "limits": "what the archive may unpack to, e.g. size=40GB,files=500000,ratio=200 (default size=20GB,files=200000,ratio=100)",
})
def download(c, url, to=None, sha256=None, limits=None):
    """Download a competition archive (resumable), check it and unpack it safely; a finished one is not repeated."""
    from toolkit.machine.console import console, warn
    from toolkit.data.dataset import describe
    from toolkit.data.download import DownloadError, download as download_archive

    try:
        result = download_archive(url, to=to, sha256=sha256, limits=limits, data_root=project_path("data"))
    except DownloadError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        raise interrupts.Interrupted("what was downloaded is kept; run the same command again to resume") from None
    for line in result.skipped[:10]:
        warn(f"skipped {escape(line)}")
    if len(result.skipped) > 10:
        warn(f"... and {len(result.skipped) - 10} more archive members skipped")
    if result.already:
        console.print(f"{escape(str(result.folder))} already downloaded (SHA-256 {result.sha256[:16]}…); nothing to do")
    if result.competition is None:
        warn(f"{escape(str(result.folder))}: {escape(result.layout_problem or '')} (the data is kept; pass the folder "
             "that holds training/ and test/ to --data)")
        return
    console.print(f"[bold]{escape(str(result.competition.root))}[/bold]: {describe(result.competition)}")
    console.print(f"next: invoke race --data {escape(str(result.competition.root))}")


@task(help={"strategies": "strategies whose weights to fetch, as for race, e.g. "
                          "clip-zs[model=ViT-B-16,pretrained=laion2b_s34b_b88k],cnn-zs[backbone=resnet50]"})
def prefetch(c, strategies="face-zs,cnn-zs,clip-zs"):
    """Download the weights the named strategies need into the usual caches, so the race runs offline."""
    from strategies import create_strategy, parse_strategy_specs
    from toolkit.machine.console import console
    from toolkit.machine.prefetch import prefetch_weights

    try:
        specs = parse_strategy_specs(strategies)
    except ValueError as error:
        raise _fail(str(error)) from None
    failed = 0
    for result in prefetch_weights(specs, create_strategy, announce=lambda label: console.print(f"{escape(label)}: downloading weights…")):
        colour = "red" if not result.ok else "green"
        console.print(f"[{colour}]{escape(result.line())}[/{colour}]", soft_wrap=True)
        failed += not result.ok
    if failed:
        raise _fail(f"{failed} of {len(specs)} strategies have no weights offline; connect and run prefetch again")


@task(help={"data": "data folder to describe, each competition in it (default: data/ in the project folder)",
            "strategies": "strategies to check (default: every strategy, plus common open_clip pairs)"})
def doctor(c, data=None, strategies=None):
    """What this machine can do: Python/torch, GPU, CPU/RAM, weights on disk, free disk, data, server."""
    from strategies import create_strategy, parse_strategy_specs, strategy_names
    from toolkit.machine.console import console
    from toolkit.machine.doctor import COMMON_EXTRA_SPECS, run_doctor
    from toolkit.views.doctor import doctor_table

    try:
        specs = parse_strategy_specs(strategies) if strategies else \
            [(name, {}) for name in strategy_names()] + parse_strategy_specs(COMMON_EXTRA_SPECS)
    except ValueError as error:
        raise _fail(str(error)) from None
    console.print(doctor_table(run_doctor(data or project_path("data"), specs, create_strategy, project=project_root())))


@task(help={"k": "only tests matching this expression, as pytest -k takes it (default: every test)"})
def test(c, k=None):
    """Run the test suite."""
    command = f"{sys.executable} -m pytest -q" + (f" -k {k!r}" if k else "")
    c.run(command, pty=False)


# --- leaderboard, submitting, the reference scorer ------------------------------------------------


def _settings(**overrides):
    from toolkit.machine.settings import SettingsError, load_settings
    try:
        return load_settings(**overrides)
    except SettingsError as error:
        raise _fail(str(error)) from None


def _leaderboard_file(option: str | None) -> Path:
    """--leaderboard PATH as typed; else the settings' file (a relative one is in the project folder)."""
    from toolkit.machine.settings import SettingsError, leaderboard_file
    try:
        return leaderboard_file(option)
    except SettingsError as error:
        raise _fail(str(error)) from None


def _open_leaderboard(option: str | None):
    from toolkit.records.store import Leaderboard, LeaderboardError
    try:
        return Leaderboard(_leaderboard_file(option))
    except LeaderboardError as error:
        raise _fail(str(error)) from None


LEADERBOARD_HELP = "leaderboard file (default: the setting `leaderboard`, leaderboard.db in the project folder)"
WORKERS_HELP = "DataLoader worker processes, for images not in the embedding cache (default: half the cores)"


@task(help={"race": "show this race (default: the latest)",
            "all": "every run of every race, and the files submitted by hand",
            "leaderboard": LEADERBOARD_HELP})
def leaderboard(c, race: Identifier | None = None, all=False, leaderboard=None):  # noqa: A002 (--all)
    """Runs best first: validation score beside the server's score, timings, submission files."""
    from toolkit.machine.console import console
    from toolkit.views.leaderboard import leaderboard_table, race_title

    race_id = race
    with _open_leaderboard(leaderboard) as board:
        chosen = None if all else (board.race(race_id) if race_id is not None else board.latest_race())
        if race_id is not None and chosen is None and not all:
            raise _fail(f"no race {race_id} in {board.path}; invoke leaderboard --all lists every run")
        summaries = board.summaries(chosen.id if chosen else None)
        if not summaries:
            console.print(f"{board.path}: no runs yet; invoke race records them")
            return
        console.print(leaderboard_table(summaries, race_title(chosen) if chosen else f"all runs in {board.path}"))
        hidden = len(board.runs()) - len(summaries)
        if hidden:
            console.print(f"{hidden} more runs (other races, files submitted by hand): invoke leaderboard --all")


@task(help={
    "file": "submission JSON to send (an option: invoke's positional arguments are always required); a file no race "
            "wrote is recorded as a run of its own (no race, status manual) (default: none; give --file, --best or --run)",
    "best": "send the best run by validation score of the latest race",
    "run": "send this run's submission (again): its id from invoke leaderboard (default: none)",
    "group": "team name (default: the setting `group`)",
    "url": "server URL, e.g. http://tatooine.disi.unitn.it:3001/retrieval/ (default: the setting `server_url`)",
    "dry-run": "check the submission and the settings; send and record nothing",
    "timeout": "seconds the whole exchange may take: connecting, sending, every read and retry",
    "retries": "extra tries after a connection error or an HTTP 5xx, waiting 1, 2, 4 ... s",
    "leaderboard": LEADERBOARD_HELP,
})
def submit(c, file=None, best=False, run: Identifier | None = None, group=None, url=None, dry_run=False,
           timeout: Seconds = 30.0, retries: ZeroOrMore = 3, leaderboard=None):
    """Send a submission to the competition server; the attempt and the server's score are recorded beside the run."""
    from toolkit.machine.console import console
    from toolkit.submit.sending import NothingToSend, check_before_sending, check_settings, submission_source
    from toolkit.submit.client import ServerError, send_and_record
    from toolkit.submit.submission import SubmissionError, load_submission

    run_id = run
    if (file is not None) + bool(best) + (run_id is not None) != 1:
        raise _fail("say what to send: --file FILE, --best (the best run of the latest race) or --run ID")
    settings = _settings(server_url=url, group=group)
    with _open_leaderboard(leaderboard) as board:
        try:
            record, path = submission_source(board, file, best, run_id)
            submission = load_submission(path)
            how = check_before_sending(board, record, submission)
            check_settings(settings)
        except (NothingToSend, SubmissionError) as error:
            raise _fail(escape(str(error))) from None
        name = f"run {record.id} ({escape(record.name)})" if record else escape(path.name)
        console.print(f"{name}: {len(submission)} queries, valid ({escape(how)})", soft_wrap=True)
        if dry_run:
            console.print(f"dry run: would send {escape(str(path))} to {escape(settings.server_url)} as "
                          f"{escape(settings.group)}; nothing sent or recorded", soft_wrap=True)
            return
        if record is None:
            record = board.add_manual_run(path)
            console.print(f"recorded {escape(path.name)} as run {record.id} (submitted by hand, no race)")
        console.print(f"sending run {record.id} to {escape(settings.server_url)} as {escape(settings.group)} ...",
                      soft_wrap=True)
        try:
            attempt = send_and_record(board, record.id, settings.server_url, settings.group, submission,
                                      timeout=timeout, retries=retries)
        except ServerError as error:
            raise _fail(f"{escape(str(error))} (recorded as attempt {error.submission_id} of run {record.id}; "
                        f"send it again with: invoke submit --run {record.id})") from None
        validation = f", validation {record.validation_score:.1f}" if record.validation_score is not None else ""
        console.print(f"server score [bold green]{attempt.server_score:.1f}[/bold green] for run {record.id} "
                      f"({escape(record.name)}{validation}); invoke leaderboard shows them side by side", soft_wrap=True)


@task(help={"answers": 'answers JSON: {"query": {file: identity}, "gallery": {file: identity}}',
            "port": "port to listen on (0: any free port)",
            "host": "address to listen on (0.0.0.0 makes it reachable from other machines)"})
def serve_scorer(c, answers, port: Port = 3001, host="127.0.0.1"):
    """A local reference scorer: the course server's protocol, scored with the competition formula."""
    from toolkit.machine.console import console
    from toolkit.retrieval.metrics import AnswersError, load_answers
    from toolkit.submit.scorer import ReferenceScorer

    try:
        truth = load_answers(answers)
        scorer = ReferenceScorer(truth, host=host, port=port,
                                 log=lambda line: console.print(escape(line), soft_wrap=True))
    except AnswersError as error:
        raise _fail(escape(str(error))) from None
    except OSError as error:
        raise _fail(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    console.print(f"reference scorer on {scorer.url}: {len(truth['query'])} queries, "
                  f"{len(truth['gallery'])} gallery images; Ctrl-C stops it", soft_wrap=True)
    try:
        scorer.serve_forever()
    except KeyboardInterrupt:
        interrupts.press_answered()     # Ctrl-C is how it is stopped: an answer, not an interruption
        console.print("stopped")
    finally:
        scorer.server_close()


# --- pictures of a race ---------------------------------------------------------------------------


@task(help={
    "run": "the run to show: its id from invoke leaderboard (default: the best run of the latest race)",
    "submission": "a submission file to show instead; one that no race wrote shows ranks only and needs --data "
                  "(default: none, the run's)",
    "data": "competition folder (default: the race's); needed for a submission file that no race wrote",
    "queries": "how many queries (one row each)",
    "validation": "the validation split instead of the test set: labels known, hits framed green and misses red",
    "worst": "the validation queries whose first hit ranks lowest (implies --validation)",
    "out": "PNG file to write (default: reports/<run>-<split>[-worst]-<N>.png)",
    "workers": WORKERS_HELP,
    "leaderboard": LEADERBOARD_HELP,
})
def show(c, run: Identifier | None = None, submission=None, data=None, queries: Count = 8, validation=False,
         worst=False, out=None, workers: ZeroOrMore | None = None, leaderboard=None):
    """A picture of what a run returns: each query beside its top-10, with rank and similarity; hits and misses
    marked on validation."""
    from strategies import create_strategy
    from toolkit.machine.console import console
    from toolkit.pictures.replay import ReplayError, rankings_to_show
    from toolkit.pictures.report import REPORTS, grid_file_name, rankings_grid

    split = "validation" if validation or worst else "test"
    with _open_leaderboard(leaderboard) as board:
        try:
            rankings = rankings_to_show(board, run, submission, data, split, create_strategy, num_workers=workers)
            image = rankings_grid(rankings, queries, worst)
        except ReplayError as error:
            raise _fail(escape(str(error))) from None
    target = Path(out) if out else project_path(REPORTS / grid_file_name(rankings, queries, worst))
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target)
    console.print(f"wrote {escape(str(target))}: {escape(rankings.title)}, {rankings.split} split, "
                  f"{min(queries, len(rankings.query_paths))} queries ({image.width}x{image.height})", soft_wrap=True)


@task(help={
    "race": "the race to report (default: the latest)",
    "out": "HTML file to write (default: reports/race-<id>.html)",
    "queries": "worst validation queries shown for the best run",
    "test-queries": "test queries shown for the best run",
    "workers": WORKERS_HELP,
    "leaderboard": LEADERBOARD_HELP,
})
def report(c, race: Identifier | None = None, out=None, queries: Count = 8, test_queries: ZeroOrMore = 4,
           workers: ZeroOrMore | None = None, leaderboard=None):
    """One self-contained HTML page of a race: leaderboard, validation score and time per strategy, validation
    against the server, and the best run's retrieval grids. Opens offline."""
    from strategies import create_strategy
    from toolkit.machine.console import console
    from toolkit.pictures.report import REPORTS, ReportError, write_report

    with _open_leaderboard(leaderboard) as board:
        try:
            path = write_report(board, race, make_strategy=create_strategy, out=out, queries=queries,
                                test_queries=test_queries, show_progress=True, num_workers=workers,
                                reports=project_path(REPORTS))
        except ReportError as error:
            raise _fail(escape(str(error))) from None
    console.print(f"wrote {escape(str(path))} (open it in a browser; it needs no network)", soft_wrap=True)
