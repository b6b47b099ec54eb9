"""The promotion gate's rules and policy file, and the registry's refusal to act without a
server (no MLflow needed here; the real-server behaviour is in test_registry_integration)."""

from __future__ import annotations

import json
import socket
import time

import pytest
from typer.testing import CliRunner

from mouthmap.cli import app
from mouthmap.registry import (
    GatePolicy,
    Measurement,
    PolicyError,
    Registry,
    RegistryUnreachable,
    decide,
    load_policy,
    write_report,
)

POLICY = GatePolicy(wer_tolerance=0.01, max_latency_ms=100, max_latency_ratio=1.5, max_size_mb=5)


def m(wer: float, latency: float = 40.0, size: float = 2.0) -> Measurement:
    return Measurement(wer=wer, cer=wer / 2, clips=95, latency_ms=latency, size_mb=size)


def test_a_better_challenger_passes_and_every_rule_is_reported_with_its_numbers():
    d = decide(m(0.20), m(0.25), POLICY, champion_version="3")
    assert d.passed
    assert len(d.reasons) == 4 and all(r.startswith("ok") for r in d.reasons)
    assert any("0.2000 <= champion 0.2500" in r for r in d.reasons)
    assert "PASSED" in d.summary()


def test_a_worse_challenger_is_refused_but_the_tolerance_lets_a_tie_through():
    refused = decide(m(0.30), m(0.25), POLICY)
    assert not refused.passed
    assert [r for r in refused.reasons if r.startswith("FAIL")][0].startswith("FAIL test WER")
    assert "REFUSED" in refused.summary()
    assert decide(m(0.259), m(0.25), POLICY).passed  # within the 0.01 tolerance
    assert not decide(m(0.261), m(0.25), POLICY).passed


@pytest.mark.parametrize(
    ("challenger", "rule"),
    [
        (m(0.1, size=6.0), "size"),  # over the size budget
        (m(0.1, latency=120.0), "latency 120.0 ms"),  # over the absolute latency budget
        (m(0.1, latency=70.0), "1.75x"),  # 1.75x the champion's 40 ms
    ],
)
def test_budgets_refuse_an_accurate_challenger(challenger, rule):
    d = decide(challenger, m(0.25), POLICY)
    assert not d.passed
    assert any(r.startswith("FAIL") and rule in r for r in d.reasons)


def test_the_first_model_becomes_champion_only_when_the_policy_says_so():
    assert decide(m(0.9), None, POLICY).passed
    assert not decide(m(0.9), None, POLICY.model_copy(update={"promote_first": False})).passed
    assert not decide(m(0.9, size=50), None, POLICY).passed  # budgets still hold


def test_measurements_on_different_splits_are_not_compared():
    other = Measurement(0.1, 0.1, 3, 40.0, 2.0, split="val")
    with pytest.raises(ValueError, match="cannot compare"):
        decide(m(0.2), other, POLICY)


def test_the_committed_policy_loads_and_a_bad_one_is_named(tmp_path):
    policy = load_policy()
    assert policy.model_name == "mouthmap" and policy.split == "test"
    bad = tmp_path / "gate.yaml"
    bad.write_text("wer_tolerance: -1\nmax_size_mb: big\n")
    with pytest.raises(PolicyError) as e:
        load_policy(bad)
    assert "wer_tolerance" in str(e.value) and "max_size_mb" in str(e.value)
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "missing.yaml")


def test_the_report_is_a_page_and_json_a_person_can_read(tmp_path):
    d = decide(m(0.30), m(0.25), POLICY, champion_version="7")
    page = write_report(d, tmp_path)
    text = page.read_text()
    assert "refused" in text and "champion v7" in text and "FAIL" in text
    data = json.loads((tmp_path / "gate.json").read_text())
    assert data["passed"] is False and data["champion"]["wer"] == 0.25
    assert Measurement.from_dict(data["challenger"]) == d.challenger


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_a_clear_error_within_seconds():
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(RegistryUnreachable, match="unreachable.*nothing was changed"):
        Registry(uri)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("command", [["show"], ["promote", "--version", "3"], ["rollback"]])
def test_registry_commands_exit_2_naming_the_server_when_it_is_down(command):
    uri = f"http://127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(app, ["registry", *command, "--mlflow-uri", uri])
    assert result.exit_code == 2
    assert "unreachable" in result.output and uri in result.output
