"""The committed smoke protocol runs end to end through `branchbench sweep` (CI's sweep path)."""

from __future__ import annotations

from pathlib import Path

from branchbench.cli import main
from branchbench.config import load_config
from branchbench.tracking import Tracking, default_uri

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_config_sweeps_and_reports(tmp_path, capsys):
    config = load_config(ROOT / "configs" / "smoke.toml")
    uri = default_uri(tmp_path)
    reports = tmp_path / "reports"
    code = main(["sweep", str(ROOT / "configs" / "smoke.toml"), "--tracking-uri", uri,
                 "--reports-dir", str(reports)])
    assert code == 0, capsys.readouterr().err
    tracking = Tracking(uri, config.experiment or "branchbench")
    cells = tracking.runs("tags.`bb.kind` = 'cell' and attributes.status = 'FINISHED'")
    methods = {r.data.tags["bb.method"] for r in cells}
    assert methods == set(config.methods)
    assert len(tracking.runs("tags.`bb.kind` = 'sweep'")) == 1
    assert len(config.datasets) == 1
    text = (reports / config.name / "report.md").read_text()  # reports/<sweep name>/
    assert all(method in text for method in config.methods)
