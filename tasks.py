"""retrieval-race: invoke tasks. Each is thin: parse options, call the toolkit, print with rich.

    invoke demo                                    # offline end-to-end run on generated data
    invoke race --data PATH [--strategies a,b] [--budget 30m]
    invoke score SUBMISSION --answers answers.json
    invoke strategies
    invoke test
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from invoke import Exit, task

from toolkit.cpu_memory import keep_freed_memory_for_reuse

keep_freed_memory_for_reuse()  # before any tensor is allocated: ~2x faster CPU forward passes
PROJECT = Path(__file__).resolve().parent
OFFLINE_STRATEGIES = "face-zs,cnn-zs"


def _fail(message: str) -> Exit:
    from toolkit.console import console
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    return Exit(code=1)


def _race(data: str, strategies: str, budget: str | None, seed: int, flip: bool | None, workers: int | None,
          gallery_pattern: str | None, held_out: float, submissions: str, rerank: bool = True):
    from strategies import parse_strategy_specs
    from toolkit.console import console, warn
    from toolkit.dataset import LayoutError, describe, find_competition
    from toolkit.race import parse_duration, race_table, run_race

    try:
        specs = parse_strategy_specs(strategies)
        budget_seconds = parse_duration(budget)
        competition = find_competition(Path(data))
    except (LayoutError, ValueError) as error:
        raise _fail(str(error)) from None
    console.print(f"[bold]{competition.root}[/bold]: {describe(competition)}")
    for path, reason in competition.ignored[:10]:
        warn(f"ignored {path}: {reason}")
    result = run_race(competition, specs, budget_seconds=budget_seconds, submissions_dir=Path(submissions),
                      seed=seed, held_out_fraction=held_out, gallery_pattern=gallery_pattern,
                      flip_tta=flip, post_process=rerank, num_workers=workers)
    console.print(race_table(result))
    best = result.best
    if best is None:
        raise _fail("no strategy finished; see the reasons above")
    console.print(f"best by validation: [bold green]{best.label}[/bold green] "
                  f"({best.validation.score:.1f}) -> {best.submission}")
    return result


@task(help={
    "data": "competition folder: training/<identity>/*, test/query/*, test/gallery/* (train/ and one wrapping folder accepted)",
    "strategies": "comma-separated names with optional options, e.g. face-zs,clip-zs[model=ViT-B-16,pretrained=laion2b_s34b_b88k]",
    "budget": "wall-clock budget such as 90m or 1h30m; strategies that cannot finish in the time left are skipped",
    "seed": "seed of the validation split",
    "flip": "flip test-time augmentation: auto (validation decides), on or off",
    "rerank": "try query expansion, DBA, k-reciprocal and dual-softmax re-ranking on validation and keep what wins "
              "(--no-rerank: plain nearest neighbours)",
    "workers": "DataLoader worker processes for decoding (default: half the cores)",
    "gallery-pattern": "filename glob marking stylised training images (e.g. '*_s.*'): they take the gallery role in validation",
    "held-out": "fraction of training identities held out for validation",
    "submissions": "folder the submission files are written to",
})
def race(c, data, strategies="face-zs,cnn-zs,clip-zs", budget=None, seed=0, flip="auto", workers=None,
         gallery_pattern=None, held_out=0.2, submissions="submissions", rerank=True):
    """Race strategies on a competition folder; write each one's submission and show validation scores."""
    flip_choices = {"auto": None, "on": True, "off": False}
    if flip not in flip_choices:
        raise _fail(f"--flip takes auto, on or off, not {flip!r}")
    _race(data, strategies, budget, int(seed), flip_choices[flip], int(workers) if workers is not None else None,
          gallery_pattern, float(held_out), submissions, rerank)


@task(help={"submission": "submission JSON file", "answers": 'answers JSON: {"query": {file: id}, "gallery": {file: id}}'})
def score(c, submission, answers):
    """Competition score of a submission file (600*Top1 + 300*Top5 + 100*Top10), with Top-k and mAP@10."""
    from rich.table import Table

    from toolkit.console import console
    from toolkit.metrics import AnswersError, score_submission
    from toolkit.submission import SubmissionError, load_submission

    try:
        entries = load_submission(Path(submission))
        truth = json.loads(Path(answers).read_text())
        result = score_submission(entries, truth)
    except FileNotFoundError:
        raise _fail(f"{answers}: no such answers file") from None
    except json.JSONDecodeError as error:
        raise _fail(f"{answers}: not valid JSON ({error})") from None
    except (SubmissionError, AnswersError) as error:
        raise _fail(str(error)) from None
    table = Table(title=str(submission))
    for column in ("score", "Top1", "Top5", "Top10", "mAP@10", "queries"):
        table.add_column(column, justify="right")
    table.add_row(f"{result.score:.1f}", f"{result.top1:.4f}", f"{result.top5:.4f}", f"{result.top10:.4f}",
                  f"{result.map_at_10:.4f}", str(result.queries))
    console.print(table)
    missing = len(truth["query"]) - len(entries)
    if missing > 0:
        console.print(f"[yellow]{missing} queries of the answers are missing from the submission (scored as misses)[/yellow]")


@task
def strategies(c):
    """List the strategies that can race, and whether their weights are available offline."""
    from rich.table import Table

    from strategies import create_strategy, strategy_class, strategy_names
    from toolkit.console import console

    table = Table(title="strategies")
    for column in ("name", "what it does", "weights offline", "detail"):
        table.add_column(column)
    for name in strategy_names():
        status = create_strategy(name).weights_status()
        table.add_row(name, strategy_class(name).summary, "[green]yes[/green]" if status.available_offline else "[red]no[/red]",
                      status.detail)
    console.print(table)


@task(help={"data": "where the generated demo competition is written", "strategies": "strategies to race"})
def demo(c, data="data/demo", strategies=OFFLINE_STRATEGIES):
    """Generate a small competition of drawn faces, race the offline strategies on it, score the best."""
    from toolkit.console import console
    from toolkit.metrics import score_submission
    from toolkit.submission import load_submission
    from toolkit.synthetic import make_synthetic_competition

    root = Path(data)
    if not (root / "answers.json").is_file():
        console.print(f"generating a demo competition in {root}")
        make_synthetic_competition(root)
    result = _race(str(root), strategies, None, 0, None, None, "*_s.*", 0.3, "submissions")
    truth = json.loads((root / "answers.json").read_text())
    for run in result.runs:
        if run.submission:
            test_score = score_submission(load_submission(run.submission), truth)
            console.print(f"{run.label}: test score {test_score.score:.1f} (validation {run.validation.score:.1f})")


@task(help={"k": "only tests matching this expression (pytest -k)"})
def test(c, k=None):
    """Run the test suite."""
    command = f"{sys.executable} -m pytest -q" + (f" -k {k!r}" if k else "")
    c.run(command, pty=False)
