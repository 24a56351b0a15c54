"""Wrong input is refused with one clear line: every JSON a user hands in goes through one loader
(size, nesting depth, no NaN, no repeated keys) and every submission through one check (exactly 10
distinct gallery names per query, each a string in the gallery, each query known), whether it is
scored (`invoke score`), sent (`invoke submit`) or shown (`invoke show`). Real files, real
subprocesses."""
import json

import pytest

from tests.test_server import ANSWERS, GALLERY, _submission
from tests.test_tasks import invoke
from toolkit.data.jsonfile import JsonInputError, nesting_depth, parse_json, read_json
from toolkit.retrieval.metrics import AnswersError, load_answers, score_submission
from toolkit.submit.submission import SubmissionError, load_submission, validate_submission

DEEP = "[" * 100_000 + "]" * 100_000


def _write(path, text):
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


# --- the loader ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ('{"a": NaN}', "NaN is not a number JSON allows"),
    ('{"a": [Infinity]}', "Infinity is not a number JSON allows"),
    ('{"a": -Infinity}', "-Infinity is not a number JSON allows"),
    ('{"a": 1e999}', "too big for a float"),
    ('{"a": ' + DEEP + "}", "nested more than 32 levels deep"),
    ('{"a": 1, "a": 2}', "the key 'a' appears more than once"),
    ("{not json", "not valid JSON (Expecting property name"),
    ('{"a": ' + "9" * 5000 + "}", "not valid JSON"),
    ("", "not valid JSON"),
])
def test_the_loader_refuses_what_json_does_not_allow_naming_the_file(tmp_path, text, message):
    path = _write(tmp_path / "in.json", text)
    with pytest.raises(JsonInputError) as caught:
        read_json(path, "submission file")
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_loader_refuses_big_files_missing_files_and_bytes_that_are_not_utf8(tmp_path):
    big = _write(tmp_path / "big.json", {"q.jpg": ["g.jpg"] * 50})
    with pytest.raises(JsonInputError, match=r"big.json: \d+ bytes, more than the 100 a submission file may have"):
        read_json(big, "submission file", max_bytes=100)
    assert read_json(big, "submission file", max_bytes=10_000) == {"q.jpg": ["g.jpg"] * 50}
    with pytest.raises(JsonInputError, match="absent.json: no such answers file"):
        read_json(tmp_path / "absent.json", "answers file")
    (tmp_path / "latin1.json").write_bytes('{"caf\xe9": 1}'.encode("latin-1"))
    with pytest.raises(JsonInputError, match="not UTF-8"):
        read_json(tmp_path / "latin1.json")


def test_depth_counts_brackets_outside_strings_only():
    assert nesting_depth('{"a": [[1], {"b": []}]}') == 4
    tricky = '{"name [[[[ {{ \\" [[[[": ["g\\\\", "[[["]}'           # brackets and escapes inside strings
    assert nesting_depth(tricky) == 2
    assert parse_json(tricky, "x", max_depth=2) == {'name [[[[ {{ " [[[[': ["g\\", "[[["]}
    with pytest.raises(JsonInputError, match="nested more than 1 levels"):
        parse_json(tricky, "x", max_depth=1)
    assert parse_json(b'\xef\xbb\xbf{"a": 1}', "bom") == {"a": 1}          # a UTF-8 byte-order mark is fine


# --- one submission check, for score, submit and show ----------------------------------------------

QUERY = sorted(ANSWERS["query"])[0]


@pytest.mark.parametrize("content, message", [
    ({**_submission(), QUERY: GALLERY[:9]}, f"{QUERY}: 9 results, expected 10"),
    ({**_submission(), QUERY: GALLERY[:11]}, f"{QUERY}: 11 results, expected 10"),
    ({**_submission(), QUERY: GALLERY[:9] + GALLERY[:1]}, f"{QUERY}: repeated gallery names ['{GALLERY[0]}']"),
    ({**_submission(), QUERY: GALLERY[:9] + ["nope.jpg"]}, f"{QUERY}: unknown gallery names ['nope.jpg']"),
    ({**_submission(), "zz.jpg": GALLERY[:10]}, "1 entries are not queries, e.g. ['zz.jpg']"),
    ({**_submission(), QUERY: [[name] for name in GALLERY[:10]]}, "must be a list of file names (strings), not a list"),
    ({**_submission(), QUERY: [7] * 10}, "not a list holding a number"),
    ({**_submission(), QUERY: GALLERY[0]}, "results must be a list of file names, not a string"),
    ({}, "the submission holds no queries"),
    ([GALLERY[:10]], "expected a JSON object"),
])
def test_score_refuses_a_wrong_submission(tmp_path, content, message):
    path = _write(tmp_path / "s.json", content)
    with pytest.raises(SubmissionError) as caught:
        score_submission(load_submission(path), ANSWERS)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_duplicates_cannot_lift_the_score_above_the_valid_files():
    valid = _submission()
    assert score_submission(valid, ANSWERS).queries == 3
    repeats = {query: [next(name for name in GALLERY if ANSWERS["gallery"][name] == ANSWERS["query"][query])] * 10
               for query in valid}
    with pytest.raises(SubmissionError, match="repeated gallery names"):
        score_submission(repeats, ANSWERS)


def test_score_still_counts_missing_queries_as_misses():
    partial = {QUERY: _submission()[QUERY]}
    assert score_submission(partial, ANSWERS).queries == len(ANSWERS["query"])
    with pytest.raises(SubmissionError, match="2 queries missing"):       # what the server would say
        validate_submission(partial, list(ANSWERS["query"]), GALLERY)


@pytest.mark.parametrize("text, message", [
    ('{"q0.jpg": [NaN]}', "NaN is not a number JSON allows"),
    ('{"q0.jpg": ' + DEEP + "}", "nested more than 32 levels deep"),
    ('{"q0.jpg": ["a.jpg"], "q0.jpg": ["b.jpg"]}', "appears more than once"),
])
def test_load_submission_refuses_json_that_is_not_allowed(tmp_path, text, message):
    with pytest.raises(SubmissionError, match=message):
        load_submission(_write(tmp_path / "s.json", text))


@pytest.mark.parametrize("answers, message", [
    ('{"query": {"q.jpg": NaN}, "gallery": {"g.jpg": "a"}}', "NaN is not a number"),
    ({"query": {"q.jpg": ["a"]}, "gallery": {"g.jpg": "a"}}, "identities are strings or integers"),
    ({"query": {"q.jpg": "a"}, "gallery": {"g.jpg": {"id": "a"}}}, "identities are strings or integers"),
    ({"query": {"q.jpg": True}, "gallery": {"g.jpg": "a"}}, "identities are strings or integers"),
    ({"query": {"q.jpg": "a"}, "gallery": []}, '"gallery": {file: identity}'),
    ({"query": {}, "gallery": {"g.jpg": "a"}}, "both non-empty"),
    ('{"query": ' + DEEP + "}", "nested more than 32 levels deep"),
])
def test_a_bad_answers_file_is_refused(tmp_path, answers, message):
    path = _write(tmp_path / "answers.json", answers)
    with pytest.raises(AnswersError) as caught:
        load_answers(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)


# --- the same from the command line: one line, exit 1, no traceback ---------------------------------


def _refused(result, message):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error:" in result.stdout and message in " ".join(result.stdout.split())
    assert "Traceback" not in result.stdout + result.stderr


def test_invoke_score_refuses_wrong_submissions_and_answers(tmp_path):
    answers = _write(tmp_path / "answers.json", ANSWERS)
    nine = _write(tmp_path / "nine.json", {**_submission(), QUERY: GALLERY[:9]})
    _refused(invoke("score", str(nine), "--answers", str(answers)), "9 results, expected 10")
    nested = _write(tmp_path / "nested.json", {**_submission(), QUERY: [[name] for name in GALLERY[:10]]})
    _refused(invoke("score", str(nested), "--answers", str(answers)), "must be a list of file names")
    deep = _write(tmp_path / "deep.json", '{"q0.jpg": ' + DEEP + "}")
    _refused(invoke("score", str(deep), "--answers", str(answers)), "nested more than 32 levels deep")
    bad_answers = _write(tmp_path / "bad-answers.json", '{"query": {"q0.jpg": NaN}, "gallery": {}}')
    _refused(invoke("score", str(_write(tmp_path / "ok.json", _submission())), "--answers", str(bad_answers)),
             "NaN is not a number")


def test_invoke_submit_and_show_refuse_the_same_files(tmp_path, synthetic_competition):
    nan = _write(tmp_path / "nan.json", '{"q0.jpg": [NaN]}')
    deep = _write(tmp_path / "deep.json", '{"q0.jpg": ' + DEEP + "}")
    eleven = _write(tmp_path / "eleven.json", {**_submission(), QUERY: GALLERY[:11]})
    sending = ("--url", "http://127.0.0.1:1/retrieval/", "--group", "team")
    _refused(invoke("submit", "--file", str(nan), *sending), "NaN is not a number JSON allows")
    _refused(invoke("submit", "--file", str(eleven), *sending), "11 results, expected 10")
    _refused(invoke("show", "--submission", str(deep), "--data", str(synthetic_competition), "--out",
                    str(tmp_path / "x.png")), "nested more than 32 levels deep")


def test_doctor_reads_a_damaged_download_marker_without_a_traceback(tmp_path, synthetic_competition):
    import shutil

    from toolkit.data.download import MARKER_NAME
    from toolkit.machine.doctor import check_data

    folder = tmp_path / "data" / "comp"
    shutil.copytree(synthetic_competition, folder)
    (folder / MARKER_NAME).write_text("[" * 100_000 + "]" * 100_000)      # json.loads: RecursionError
    [check], partial = check_data(tmp_path / "data")
    assert check.downloaded_from is None and check.problem is None and partial == []
    (folder / MARKER_NAME).write_text(json.dumps({"url": "https://example.org/comp.zip"}))
    [check], _ = check_data(tmp_path / "data")
    assert check.downloaded_from == "https://example.org/comp.zip"
