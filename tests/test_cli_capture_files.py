"""`servomex capture --out` never corrupts a file (api.md §13; issue 11 item 8).

An existing file is appended to only when it holds a recording of the same format and schema
(the final line then ends with `, appended`); anything else is refused with one `error:` line
naming `--overwrite`, and the file is left byte for byte as it was. The recordings used here
are made by `servomex capture` itself, from a Modbus simulator without line timing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from cli_helpers import CliRun, run
from servomexlib.cli import main
from servomexlib.cli.recording_files import (
    LEGACY_COLUMNS,
    OutputAction,
    plan_output,
    sniff_recording,
)
from servomexlib.errors import ServomexValidationError
from servomexlib.sinks.schema import COLUMNS

SIM = "sim://?realtime=0"
FORMATS = ("csv", "jsonl", "sqlite", "parquet")
SUFFIX = {"csv": ".csv", "jsonl": ".jsonl", "sqlite": ".db", "parquet": ".parquet"}
#: Formats whose sink can add rows to an existing recording (Parquet cannot).
APPENDABLE = {"csv", "jsonl", "sqlite"}
ONE_TICK = ["capture", SIM, "--protocol", "modbus_rtu", "--rate", "3", "--duration", "0.1"]
FINAL_RE = re.compile(r"captured (\d+) samples to (.+?) in \d+\.\d\ds(.*)")


def capture(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> CliRun:
    # One tick (--rate 3, --duration 0.1): five samples, one per identified channel.
    return run(capsys, *ONE_TICK, "--out", str(out), *extra)


def rows_in(path: Path, fmt: str) -> int:
    if fmt == "csv":
        with path.open(newline="") as f:
            return len(list(csv.DictReader(f)))
    if fmt == "jsonl":
        return len(path.read_text().splitlines())
    if fmt == "sqlite":
        con = sqlite3.connect(path)
        try:
            (n,) = con.execute("SELECT COUNT(*) FROM samples").fetchone()
        finally:
            con.close()
        return int(n)
    import pyarrow.parquet as pq

    return int(pq.read_table(path).num_rows)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One genuine recording per format, written by `servomex capture`."""
    base = tmp_path_factory.mktemp("recordings")
    made: dict[str, Path] = {}
    for fmt in FORMATS:
        out = base / f"rec{SUFFIX[fmt]}"
        code = main([*ONE_TICK, "--out", str(out), "--quiet"])
        assert code == 0
        assert rows_in(out, fmt) == 5
        made[fmt] = out
    return made


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_sniffer_recognises_each_format(recordings: dict[str, Path], fmt: str) -> None:
    found = sniff_recording(recordings[fmt])
    assert found.format == fmt
    assert not found.older
    assert found.exists
    assert not found.empty


@pytest.mark.parametrize("existing", FORMATS)
@pytest.mark.parametrize("asked", FORMATS)
def test_every_existing_format_against_every_format(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    recordings: dict[str, Path],
    existing: str,
    asked: str,
) -> None:
    out = tmp_path / recordings[existing].name
    shutil.copyfile(recordings[existing], out)
    before = digest(out)
    code, lines, stderr = capture(capsys, out, "--format", asked)
    if existing == asked and asked in APPENDABLE:
        assert code == 0, stderr
        match = FINAL_RE.fullmatch("\n".join(lines).strip())
        assert match, lines
        assert int(match.group(1)) == 5
        assert match.group(3).endswith(", appended")
        assert rows_in(out, existing) == 10  # the old five and the new five
        return
    assert code == 1
    assert lines == []
    assert stderr.startswith(f"error: {out} ")
    assert stderr.count("\n") == 1
    assert "--overwrite" in stderr
    assert "overwrite=True" not in stderr
    assert digest(out) == before  # byte for byte as it was
    assert not out.with_name(out.name + ".parts").exists()


@pytest.mark.parametrize("existing", FORMATS)
def test_overwrite_replaces_any_recording(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    recordings: dict[str, Path],
    existing: str,
) -> None:
    asked = "jsonl" if existing != "jsonl" else "sqlite"
    out = tmp_path / recordings[existing].name
    shutil.copyfile(recordings[existing], out)
    code, lines, stderr = capture(capsys, out, "--format", asked, "--overwrite")
    assert code == 0, stderr
    assert not "\n".join(lines).strip().endswith("appended")
    assert sniff_recording(out).format == asked
    assert rows_in(out, asked) == 5


def test_the_messages_say_what_the_file_holds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, recordings: dict[str, Path]
) -> None:
    out = tmp_path / "rec.csv"
    shutil.copyfile(recordings["jsonl"], out)
    _, _, err = capture(capsys, out)  # the format comes from the .csv extension
    assert err == (
        f"error: {out} already holds a JSONL recording, not CSV: pass --overwrite to replace "
        "it, or choose another --out\n"
    )
    parquet = tmp_path / "rec.parquet"
    shutil.copyfile(recordings["parquet"], parquet)
    _, _, err = capture(capsys, parquet)
    assert err == (
        f"error: {parquet} already holds a Parquet recording; Parquet files cannot be appended "
        "to: pass --overwrite to replace it, or choose another --out\n"
    )


def test_a_file_that_is_not_a_recording_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name, content in [
        ("notes.csv", b"a,b\n1,2\n"),
        ("notes.jsonl", b'{"a": 1}\n'),
        ("notes.db", b"SQLite format 3\x00" + b"\x00" * 200),
        ("notes.parquet", b"\x89PNG\r\n\x1a\n"),
        ("data.csv", bytes(range(256)) * 4),
    ]:
        out = tmp_path / name
        out.write_bytes(content)
        code, lines, err = capture(capsys, out)
        assert (code, lines) == (1, []), name
        assert err.startswith(f"error: {out} already exists and holds something that is not a")
        assert err.endswith(": pass --overwrite to replace it, or choose another --out\n")
        assert out.read_bytes() == content, name


def test_a_sqlite_database_of_another_program_is_not_a_recording(tmp_path: Path) -> None:
    out = tmp_path / "app.db"
    con = sqlite3.connect(out)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    before = digest(out)
    found = sniff_recording(out)
    assert found.format is None
    assert "without a 'samples' table" in found.description
    with pytest.raises(ServomexValidationError, match="--overwrite"):
        plan_output(str(out), "sqlite", overwrite=False)
    assert digest(out) == before
    # Looking creates nothing next to the database (no -wal, no -shm).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_an_empty_file_is_a_new_recording(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for fmt in FORMATS:
        out = tmp_path / f"empty{SUFFIX[fmt]}"
        out.touch()
        code, lines, err = capture(capsys, out)
        assert code == 0, err
        assert not "\n".join(lines).strip().endswith("appended")
        assert rows_in(out, fmt) == 5


def test_a_directory_is_refused_even_with_overwrite(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "dir.csv"
    out.mkdir()
    (out / "keep").write_text("x")
    code, _, err = capture(capsys, out, "--overwrite")
    assert code == 1
    assert err == f"error: --out {out} is a directory; give a file name\n"
    assert (out / "keep").read_text() == "x"


def test_an_interrupted_parquet_journal_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run.parquet"
    journal = tmp_path / "run.parquet.parts"
    journal.mkdir()
    (journal / "part-00000.parquet").write_bytes(b"PAR1")
    found = sniff_recording(out)
    assert found.format == "parquet"
    with pytest.raises(ServomexValidationError, match="interrupted capture"):
        plan_output(str(out), "parquet", overwrite=False)
    assert plan_output(str(out), "parquet", overwrite=True).action is OutputAction.REPLACE


def test_jsonl_lines_are_checked_at_both_ends(tmp_path: Path, recordings: dict[str, Path]) -> None:
    out = tmp_path / "rec.jsonl"
    text = recordings["jsonl"].read_text()
    out.write_text(text + '{"something": "else"}\n')
    assert sniff_recording(out).format is None
    # A crash may leave a partial last line: only complete lines count.
    out.write_text(text + '{"device": "sim://", "chan')
    assert sniff_recording(out).format == "jsonl"


@pytest.mark.skipif("value_state" not in COLUMNS, reason="the 22-column schema has not landed")
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_older_recording_is_not_appended_to(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"old{SUFFIX[fmt]}"
    if fmt == "csv":
        row = ["sim://", "I1", "transducer", "Oxygen", "20.9", "%"] + ["0"] * 15
        out.write_text(",".join(LEGACY_COLUMNS) + "\r\n" + ",".join(row[: len(LEGACY_COLUMNS)]))
    else:
        out.write_text(json.dumps(dict.fromkeys(LEGACY_COLUMNS)) + "\n")
    before = digest(out)
    found = sniff_recording(out)
    assert (found.format, found.older) == (fmt, True)
    code, _, err = capture(capsys, out)
    assert code == 1
    assert "is an older" in err
    assert "servomex plot still reads it" in err
    assert "--overwrite" in err
    assert digest(out) == before


def test_overwrite_keeps_the_old_file_when_the_device_cannot_be_opened(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, recordings: dict[str, Path]
) -> None:
    out = tmp_path / "rec.jsonl"
    shutil.copyfile(recordings["jsonl"], out)
    before = digest(out)
    code, _, err = run(
        capsys, "capture", str(tmp_path / "no-such-port"), "--out", str(out), "--overwrite"
    )
    assert code == 1
    assert err.startswith("error: could not open ")
    assert digest(out) == before


def test_name_sets_the_device_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "named.jsonl"
    code, _, err = capture(capsys, out, "--name", "stack-3")
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["device"] for r in rows] == ["stack-3"] * 5
