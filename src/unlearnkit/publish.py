"""Publishing an unlearned model with its record: ``unlearnkit push RUN_DIR REPO_ID`` uploads the run's ``model/``
(with its model card, :mod:`unlearnkit.model_card`) to the root of a Hugging Face model repository, the adapter
under ``adapter/`` and the run's record (config, metrics, run facts, report) under ``unlearning/``."""

from __future__ import annotations

import re
from pathlib import Path

from unlearnkit.errors import UnlearnkitError
from unlearnkit.outputs import CONFIG_FILE, METRICS_FILE, REPORT_FILE, RUN_FILE, RunDirectory

REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
RECORD_FOLDER = "unlearning"


def check_push(run_dir: Path, repo_id: str) -> RunDirectory:
    """The run to push, or one sentence on what is wrong, before anything is uploaded."""
    if not REPO_ID.match(repo_id):
        raise UnlearnkitError(f"{repo_id!r} is not a repository id; write it as owner/name (e.g. me/my-model).")
    run = RunDirectory(run_dir)
    if not run.finished:
        raise UnlearnkitError(f"{run_dir} is not a finished run's directory (no run.json); push what `unlearnkit "
                              "run` wrote.")
    if not (run.model_dir / "README.md").is_file():
        raise UnlearnkitError(f"{run_dir} has no model with its card (model/README.md): the run was made with "
                              "output.save_model off or before model cards; run it again to push it.")
    return run


def push_run(run_dir: Path, repo_id: str, *, private: bool = True, token: str | None = None) -> str:
    """Upload the run's model, adapter and record to ``repo_id`` (created if missing, private by default);
    returns the repository's URL."""
    from huggingface_hub import HfApi

    run = check_push(run_dir, repo_id)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    message = f"unlearnkit: {run.metrics().stop_reason}"
    api.upload_folder(repo_id=repo_id, folder_path=run.model_dir, commit_message=message)
    if (run.adapter_dir / "adapter_config.json").is_file():
        api.upload_folder(repo_id=repo_id, folder_path=run.adapter_dir, path_in_repo="adapter",
                          commit_message=message)
    record = [name for name in (CONFIG_FILE, METRICS_FILE, RUN_FILE, REPORT_FILE) if (run.path / name).is_file()]
    api.upload_folder(repo_id=repo_id, folder_path=run.path, path_in_repo=RECORD_FOLDER, allow_patterns=record,
                      commit_message=message)
    return str(url)
