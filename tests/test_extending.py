"""docs/extending.md's method of one's own, run exactly as the page shows it: its code block saved to a file outside
the package, named by `method.name: my_method.py:CappedAscent`, through `unlearnkit run`."""

from __future__ import annotations

import json
import re

import yaml

from conftest import REPO, memorised_run_overrides, run_cli


def _blocks(language: str) -> list[str]:
    page = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", page, flags=re.DOTALL)


def test_the_method_of_the_extending_page_runs_from_a_file_outside_the_package(memorized_model_dir, tmp_path):
    code, settings = _blocks("python")[0], yaml.safe_load(_blocks("yaml")[0])
    assert len(code.strip().splitlines()) <= 40  # "a user-defined method in under ~40 lines"
    (tmp_path / "my_method.py").write_text(code, encoding="utf-8")
    base = REPO / "configs" / "paper" / "gpt-neo-125m-lora-ihl.yaml"
    overrides = [*memorised_run_overrides(memorized_model_dir, tmp_path / "run"), "adapter.name=none",
                 "train.lr=3e-3", "eval.audit=false", "output.fail_if_not_forgotten=false",
                 f"method={json.dumps(settings['method'])}"]
    done = run_cli("run", str(base), *[part for o in overrides for part in ("--set", o)], "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert resolved["method"] == {"name": "my_method.py:CappedAscent", "retain_weight": 1.0, "retain_kind": "lm",
                                  "ceiling": 4.0}
    history = metrics["epochs"]
    # its loss ran: capped ascent is minus a mean of per-token losses each at most the ceiling
    assert all(-4.0 <= epoch["forget_loss"] < 0 for epoch in history)
    assert history[-1]["forget_ma"] < metrics["before"]["forget"]["ma"]

    refused = run_cli("run", str(base), *[part for o in overrides for part in ("--set", o)],
                      "--set", "method.ceilng=2", cwd=tmp_path)
    assert refused.returncode == 2 and "method.ceilng is not an option of my_method.py:CappedAscent" in \
        refused.stderr and "Traceback" not in refused.stderr, refused.stderr

    (tmp_path / "not_a_method.py").write_text("class Plain:\n    pass\n", encoding="utf-8")
    refused = run_cli("run", str(base), *[part for o in overrides for part in ("--set", o)],
                      "--set", "method={name: not_a_method.py:Plain}", cwd=tmp_path)
    assert refused.returncode == 2 and "not_a_method.py:Plain is not an unlearning method" in refused.stderr \
        and "Traceback" not in refused.stderr, refused.stderr
