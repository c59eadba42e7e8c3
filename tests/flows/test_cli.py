"""The command line: help that teaches, and clear errors before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_help_lists_commands_and_quick_start() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("run", "search", "replay", "config", "tierembed run"):
        assert word in result.output


def test_run_help_explains_source_and_budget() -> None:
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0 and "glob" in result.output and "--budget" in result.output


def test_missing_file_fails_fast_with_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
    assert "no input files match" in result.output


def test_directory_without_documents_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    result = runner.invoke(app, ["run", str(tmp_path)])
    assert result.exit_code == 2 and "directory" in result.output


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("budget:\n  per_run_usd: -1\n")
    (tmp_path / "d.jsonl").write_text('{"id": "a", "text": "b"}\n')
    result = runner.invoke(app, ["run", str(tmp_path / "d.jsonl"), "--config", str(cfg)])
    assert result.exit_code == 2 and "budget.per_run_usd" in result.output


def test_config_command_prints_effective_settings_without_secrets(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-print")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0 and "sk-do-not-print" not in result.output
    assert '"api_threshold"' in result.output


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "-inf", "NaN", "-0.01"])
def test_budget_that_is_not_a_finite_amount_is_refused_before_anything_starts(
    tmp_path: Path, value: str
) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": "a", "text": "b"}\n')
    result = runner.invoke(app, ["run", str(tmp_path / "d.jsonl"), "--budget", value])
    assert result.exit_code == 2, result.output
    assert "finite amount of US dollars" in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_reconcile_refuses_a_bill_that_is_not_a_finite_amount(tmp_path: Path, value: str) -> None:
    result = runner.invoke(app, ["budget", "reconcile", "some-run", "--billed-usd", value])
    assert result.exit_code == 2 and "finite amount of US dollars" in result.output


def test_zero_budget_is_a_valid_budget() -> None:
    from flows.cli_values import finite_usd

    assert finite_usd(0.0) == 0.0 and finite_usd(None) is None and finite_usd(2.5) == 2.5


@pytest.mark.parametrize(("option", "value"), [("--max-cost", "nan"), ("--max-cost", "-1"),
                                               ("--min-gain", "inf")])
def test_router_train_refuses_numbers_that_are_not_finite(tmp_path: Path, option: str, value: str) -> None:
    (tmp_path / "labels.jsonl").write_text('{"id": "a", "text": "b", "label": "x"}\n')
    result = runner.invoke(app, ["router", "train", str(tmp_path / "labels.jsonl"), option, value])
    assert result.exit_code == 2 and "finite" in result.output, result.output
