"""`treeopt study` as a shared study (issue 28, item 4): two worker processes on one SQLite
file finish --trials trials in total, none proposed twice, and one of them writes -o."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
STORIES = ROOT.parent / "shared" / "models" / "stories260K"


def heads_and_profile(tmp_path: Path) -> tuple[Path, Path]:
    """Random 2-head Medusa heads for stories260K and a made-up 2-head profile."""
    from medusa_runtime.heads import MedusaConfig, MedusaHeads
    from treeopt.core.profile import Profile
    from treeopt.files.profile_file import write_profile

    torch.manual_seed(0)
    MedusaHeads(MedusaConfig(2, 1, 64, 512)).save_pretrained(tmp_path / "heads")
    write_profile(tmp_path / "profile.json", Profile.from_cumulative_accuracy(
        [[0.6, 0.7, 0.75], [0.4, 0.5, 0.55]]))
    return tmp_path / "heads", tmp_path / "profile.json"


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    heads, profile = heads_and_profile(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\nThe cat sat\n")
    database = tmp_path / "study.db"
    output = tmp_path / "best.json"
    command = [sys.executable, "-m", "treeopt", "study", "-m", str(STORIES), "--heads",
               str(heads), "-p", str(profile), "-d", str(prompts), "--trials", "6",
               "--max-prompts", "1", "--max-new-tokens", "4", "--max-budget", "6",
               "--device", "cpu", "--storage", f"sqlite:///{database}", "-o", str(output),
               "-q"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=environment) for _ in range(2)]
    results = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_out, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="treeopt-study", storage=f"sqlite:///{database}")
    state = optuna.trial.TrialState
    finished = study.get_trials(states=(state.COMPLETE, state.PRUNED))
    assert len(finished) == 6  # in total, not per worker
    proposals = [tuple(sorted(trial.params.items())) for trial in finished]
    assert len(set(proposals)) == 6  # no trial proposed twice
    errs = [err for _, err in results]
    assert sum(f"wrote {output}" in err for err in errs) == 1, errs  # one writer
    assert sum("the worker that finishes the study's last trial writes it" in err
               for err in errs) == 1, errs
    ran = [int(err.split("this worker ran ")[1].split(" ")[0]) for err in errs]
    assert sum(ran) >= 6 and all(n >= 0 for n in ran)
    import json

    written = json.loads(output.read_text())
    assert written["provenance"]["best_trial"] == study.best_trial.number
    assert written["provenance"]["trials"] == 6


def test_sampler_seeded_by_trial_number_proposes_what_a_worker_would() -> None:
    """The same trial number gives the same proposal in any worker: none duplicated."""
    from treeopt.model.study import trial_seeded_sampler

    def first_proposals(seed: int, skip: int) -> list[float]:
        study = optuna.create_study(sampler=trial_seeded_sampler(seed))
        for _ in range(skip):  # another worker's trials, enqueued first
            study.tell(study.ask(), state=state.FAIL)
        trial = study.ask()
        return [trial.number, trial.suggest_float("x", 0, 1)]

    state = optuna.trial.TrialState
    assert first_proposals(0, 0) == first_proposals(0, 0)
    assert first_proposals(0, 0)[1] != first_proposals(0, 1)[1]
    assert first_proposals(0, 0)[1] != first_proposals(1, 0)[1]


def test_storage_password_is_not_written_into_provenance() -> None:
    from treeopt.workflows.study import redacted

    assert redacted("postgresql://me:secret@db.example/treeopt") == \
        "postgresql://me:***@db.example/treeopt"
    assert redacted("sqlite:///study.db") == "sqlite:///study.db"
