"""``servomex config check``: the command line over the service's configuration checker."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import run

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "plant.toml"


def test_the_shipped_example_is_valid_and_reports_every_bus(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, lines, err = run(capsys, "config", "check", str(EXAMPLE))
    assert (code, err) == (0, "")
    assert lines[0].startswith(f"{EXAMPLE}: valid: 3 buses")
    assert sum(1 for line in lines if line.startswith("bus[")) == 3
    assert any("utilisation:" in line and "%" in line for line in lines)


def test_every_problem_is_listed_with_its_line_and_exit_two(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[service]\nnam = "x"\n', encoding="utf-8")
    code, lines, err = run(capsys, "config", "check", str(bad))
    assert (code, lines) == (2, [])
    assert err.splitlines() == [
        f"error: {bad}:2: service.nam: unknown key (did you mean 'name'?)",
        f"error: {bad}: bus: no [[bus]]: a service needs at least one bus",
        f"error: {bad}: sink: no [[sink]]: a service that stores nothing loses every reading; "
        "add a sqlite, csv, … sink",
        f"{bad}: 3 problems, not valid",
    ]


def test_a_missing_file_is_one_error_and_exit_two(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "absent.toml"
    code, lines, err = run(capsys, "config", "check", str(missing))
    assert (code, lines) == (2, [])
    assert (
        err.splitlines()[0] == f"error: {missing}: cannot read the file: No such file or directory"
    )


def test_config_without_an_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(capsys, "config")
    assert exc.value.code == 2
