"""The README's commands, as written: each one runs (on a reduced budget) or is excused here with a reason.

A command added to the README without an entry below fails this test, so a README command is tested or
knowingly excused. Long sweeps are composed with ``--cfg job`` (every point of a multirun is then validated
by its own tests); the short ones really run on 2,000 real MNIST images, one epoch each.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
PROGRAMS = ("prunesweep", "prunesweep-report", "prunesweep-bench", "prunesweep-reproduce")
# Console scripts a stale install may lack (pyproject gained them after `pip install -e .`): run as modules.
MODULES = {"prunesweep-reproduce": "prunesweep.reproduce"}
BUDGET = ["data.train_subset=2000", "train.epochs=1", "finetune.epochs=1", "trainer.enable_progress_bar=false"]

RUN = "run"  # really run, with BUDGET and a throwaway store appended
COMPOSE = "compose"  # compose only (`--cfg job`): the reason says why a full run is not done here
REPORT = "report"  # prunesweep-report on the sweep that the RUN commands made
HELP = "help"  # a `--help` command, run as typed
REGISTER = "register"  # prunesweep-report --register on the smoke sweep, twice: the second adds no version
REPRODUCE = "reproduce"  # prunesweep-reproduce on a finished point of the smoke sweep

# Every README command (comments stripped, whitespace collapsed) -> (how it is tested, why).
COMMANDS: dict[str, tuple[str, str]] = {
    "prunesweep --help": (HELP, "prints the config groups and the most useful commands"),
    "prunesweep +sweep=smoke": (RUN, "8 points on 2,000 images"),
    "prunesweep -m pruning.sparsity=0.5,0.9 pruning.threshold=global,layerwise": (RUN, "4 points; relaunched too"),
    "prunesweep-report sweep-<id> --out report/": (REPORT, "the smoke sweep's id put in for <id>"),
    "prunesweep-report sweep-<id> --register lenet5-pruned --tolerance 0.5": (REGISTER, "on the smoke sweep, twice"),
    "prunesweep-reproduce <run_id>": (REPRODUCE, "a smoke sweep point's run id put in for <run_id>"),
    "prunesweep +sweep=default": (COMPOSE, "36 points: 10+ minutes even on a reduced budget"),
    "prunesweep +sweep=seeds": (COMPOSE, "108 points"),
    "prunesweep +sweep=structures": (COMPOSE, "54 points of ResNet and ViT"),
    "prunesweep +sweep=frontier_reduced": (COMPOSE, "15 long recipes"),
    "prunesweep +sweep=frontier": (COMPOSE, "57 long recipes, hours"),
    "prunesweep +sweep=frontier2": (COMPOSE, "18 long recipes"),
    "prunesweep +sweep=frontier2 hydra/launcher=joblib hydra.launcher.n_jobs=2": (COMPOSE, "18 long recipes"),
    "prunesweep +sweep=frontier +frontier=lenet300_unstructured_global_70xw_distill finetune.epochs=64 "
    "hydra/launcher=joblib hydra.launcher.n_jobs=2": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier_reduced hydra/launcher=joblib hydra.launcher.n_jobs=2": (COMPOSE, "15 long recipes"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_100x finetune.epochs=32": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier hydra/launcher=joblib hydra.launcher.n_jobs=2": (COMPOSE, "57 long recipes"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational hydra/launcher=joblib "
    "hydra.launcher.n_jobs=2": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=lenet300_unstructured_global_70xw_variational threads=1": (
        COMPOSE,
        "3 long runs",
    ),
    "prunesweep +sweep=frontier +frontier=lenet300_unstructured_global_70xw_variational "
    "pruning.variational.epochs=200 finetune.epochs=64 finetune.distill.weight=0.7 hydra/launcher=joblib "
    "hydra.launcher.n_jobs=3 threads=1": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational finetune.epochs=64 "
    "finetune.distill.weight=0.7 hydra/launcher=joblib hydra.launcher.n_jobs=3 threads=1": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational finetune.epochs=32 "
    "hydra/launcher=joblib hydra.launcher.n_jobs=3 threads=1": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=lenet300_unstructured_global_70xw_distill pruning.schedule=splicing "
    "finetune.epochs=64 hydra/launcher=joblib hydra.launcher.n_jobs=3 threads=1": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=lenet300_unstructured_global_70xw_distill pruning.schedule=gradual "
    "finetune.optimizer=sgd finetune.lr=0.005 finetune.epochs=64 hydra/launcher=joblib hydra.launcher.n_jobs=6 "
    "threads=1": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.schedule=oneshot finetune.lr=0.0001 hydra/launcher=joblib "
    "hydra.launcher.n_jobs=3 threads=1": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear finetune.lr=0.0001 hydra/launcher=joblib hydra.launcher.n_jobs=3 "
    "threads=1": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=lenet300_unstructured_global_70xw_variational "
    "pruning.variational.train_clip=true pruning.variational.lr_decay=linear finetune.lr=0.0001 "
    "hydra/launcher=joblib hydra.launcher.n_jobs=1 threads=1": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.variational.epochs=60 pruning.schedule=oneshot finetune.lr=0.0001 "
    "hydra/launcher=joblib hydra.launcher.n_jobs=3 threads=1": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=lenet300_unstructured_global_70xw_variational "
    "pruning.variational.train_clip=true pruning.variational.lr_decay=linear pruning.schedule=oneshot "
    "finetune.lr=0.0001 hydra/launcher=joblib hydra.launcher.n_jobs=1 threads=1": (COMPOSE, "3 long runs"),
    "prunesweep +sweep=frontier +frontier=lenet300_unstructured_global_70xw_variational "
    "pruning.variational.train_clip=true pruning.variational.lr_decay=linear pruning.schedule=oneshot "
    "finetune.epochs=64 finetune.distill.weight=0.7 hydra/launcher=joblib hydra.launcher.n_jobs=1 threads=1": (
        COMPOSE,
        "3 long runs",
    ),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.schedule=oneshot pruning.sparsity=0.9975 finetune.lr=0.0001 "
    "hydra/launcher=joblib hydra.launcher.n_jobs=3 threads=1": (COMPOSE, "3 long runs (400x weights-only)"),
    "prunesweep +sweep=frontier +frontier=lenet300_unstructured_global_70xw_distill "
    "+model@finetune.distill.teacher=lenet5 finetune.epochs=64 hydra/launcher=joblib hydra.launcher.n_jobs=3 "
    "threads=1": (COMPOSE, "3 long runs (a LeNet-5 teacher)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.schedule=oneshot finetune.lr=0.0001 "
    "+model@finetune.distill.teacher=resnet finetune.distill.weight=0.7 hydra/launcher=joblib "
    "hydra.launcher.n_jobs=3 threads=1": (COMPOSE, "3 long runs (a ResNet-20 teacher)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.schedule=oneshot finetune.lr=0.001 hydra/launcher=joblib "
    "hydra.launcher.n_jobs=3 threads=1": (COMPOSE, "3 long runs (lr 0.001)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.clipped_noise=true pruning.variational.anneal_epochs=5 pruning.variational.lr_decay=linear "
    "pruning.schedule=oneshot finetune.lr=0.0001 seed=0 threads=1": (COMPOSE, "a long run (clipped noise, seed 0)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.clipped_noise=true pruning.variational.anneal_epochs=20 pruning.variational.lr_decay=linear "
    "pruning.schedule=oneshot finetune.lr=0.0001 seed=0 threads=1": (COMPOSE, "a long run (clipped noise, seed 0)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.variational.lr=0.003 pruning.schedule=oneshot finetune.lr=0.0001 "
    "channels_last=true seed=0 threads=1": (COMPOSE, "a long run (VD at lr 0.003)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.variational.lr=0.01 pruning.schedule=oneshot pruning.sparsity=0.9975 "
    "finetune.lr=0.0001 channels_last=true seed=0 threads=1": (COMPOSE, "a long run (the stretch, VD at lr 0.01)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.variational.lr=0.005 pruning.schedule=oneshot finetune.lr=0.0001 "
    "channels_last=true seed=0 threads=1": (COMPOSE, "a long run (VD at lr 0.005)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.variational.lr=0.003 pruning.schedule=oneshot "
    "pruning.sparsity=0.99643 finetune.lr=0.0001 channels_last=true seed=0 threads=1": (
        COMPOSE,
        "a long run (goal 1's VD networks cut at 280x)",
    ),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.variational.lr=0.003 pruning.schedule=oneshot finetune.lr=0.0001 "
    "channels_last=true train.epochs=30 seed=0 threads=1": (COMPOSE, "a long run (30 dense epochs)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.variational.lr=0.003 pruning.variational.epochs=60 "
    "pruning.schedule=oneshot finetune.lr=0.0001 channels_last=true train.epochs=30 seed=0 threads=1": (
        COMPOSE,
        "a long run (60 VD epochs)",
    ),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.variational.lr=0.003 pruning.variational.epochs=60 "
    "pruning.schedule=oneshot pruning.sparsity=0.9975 finetune.lr=0.0001 channels_last=true train.epochs=30 seed=0 "
    "threads=1": (COMPOSE, "a long run (the stretch on 60 VD epochs)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.variational.lr=0.003 pruning.schedule=oneshot finetune.lr=0.0001 "
    "channels_last=true train.epochs=30 data.train_on_val=true seed=0 threads=1": (COMPOSE, "a long run (goal 1, 60k)"),
    "prunesweep +sweep=frontier +frontier=unstructured_global_285xw_variational pruning.variational.train_clip=true "
    "pruning.variational.lr_decay=linear pruning.variational.lr=0.003 pruning.schedule=oneshot pruning.sparsity=0.9975 "
    "finetune.lr=0.0001 channels_last=true train.epochs=30 data.train_on_val=true seed=0 threads=1": (
        COMPOSE,
        "a long run (the stretch, 60k)",
    ),
    "prunesweep +sweep=frontier +frontier=lenet300_unstructured_global_70xw_distill finetune.epochs=64 "
    "data.train_on_val=true hydra/launcher=joblib hydra.launcher.n_jobs=3 threads=1": (
        COMPOSE,
        "a long run (goal 3 like for like, 60k)",
    ),
    "prunesweep +sweep=default hydra/launcher=joblib hydra.launcher.n_jobs=2": (
        COMPOSE,
        "36 points; joblib grids run in tests/test_sweep.py",
    ),
    "prunesweep model=custom model._target_=my_package.models.Net": (COMPOSE, "my_package is the reader's own"),
    "prunesweep data=image_folder data.path=/data/my_images model.num_classes=5": (
        COMPOSE,
        "the reader's folder; tests/test_own_model.py runs one on MNIST PNGs",
    ),
    "prunesweep data=torchvision data.dataset=FashionMNIST data.root=/data/torchvision": (
        COMPOSE,
        "the reader's files; tests/data/test_data_folder.py reads torchvision's layout offline",
    ),
    "prunesweep model=torchvision_resnet18 pruning.granularity=channel pruning.sparsity=0.5": (
        COMPOSE,
        "11.2M parameters at 28x28: minutes per epoch; rebuilt vs masked in tests/pruning/test_pruning_discover.py",
    ),
    "prunesweep model=mobilenet_v2 pruning.granularity=channel": (
        COMPOSE,
        "slow to train here; rebuilt vs masked in tests/pruning/test_pruning_discover.py",
    ),
    "prunesweep +sweep=default hydra/launcher=ray hydra.launcher.ray.init.address=HEAD:6379 "
    "tracking.uri=http://SERVER:5000": (
        COMPOSE,
        "needs a Ray cluster; tests/cluster/test_ray.py runs the smoke sweep so",
    ),
    "prunesweep +sweep=default hydra/launcher=submitit_slurm hydra.launcher.partition=PART "
    "hydra.launcher.cpus_per_task=4 hydra.launcher.mem_gb=8 hydra.launcher.timeout_min=60 "
    "tracking.uri=http://SERVER:5000": (
        COMPOSE,
        "needs a SLURM cluster; tests/cluster/test_slurm.py runs the smoke sweep",
    ),
    "prunesweep +sweep=default hydra/launcher=submitit_slurm hydra.launcher.cpus_per_task=4": (
        COMPOSE,
        "needs a SLURM cluster",
    ),
}


def readme_commands(text: str) -> list[str]:
    """Command lines of the README's fenced blocks that call one of PROGRAMS (``.venv/bin/`` or not)."""
    found: list[str] = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            for part in line.split("#", 1)[0].split("&&"):
                words = part.split()
                if words and (words[0] in PROGRAMS or words[0].endswith(tuple(f"bin/{p}" for p in PROGRAMS))):
                    command = " ".join([Path(words[0]).name, *words[1:]])
                    if command not in found:
                        found.append(command)
    return found


def test_readme_commands_are_found():
    """The collector sees the README's commands (a broken collector must not pass by finding none)."""
    commands = readme_commands(README.read_text())
    assert "prunesweep +sweep=default" in commands
    assert any(c.startswith("prunesweep -m ") for c in commands)
    text = "```bash\n.venv/bin/prunesweep-report x  # note\nsrc/prunesweep/  a folder\n```\nprunesweep +y\n"
    assert readme_commands(text) == ["prunesweep-report x"]


def test_every_readme_command_is_listed_here():
    commands = readme_commands(README.read_text())
    unlisted = [c for c in commands if c not in COMMANDS]
    assert not unlisted, f"README commands neither run nor excused in tests/test_readme.py: {unlisted}"
    stale = [c for c in COMMANDS if c not in commands]
    assert not stale, f"listed here but no longer in the README: {stale}"


def _run(argv: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    script = BIN / argv[0]
    if not script.exists() and argv[0] in MODULES:
        argv = [sys.executable, "-m", MODULES[argv[0]], *argv[1:]]
    else:
        argv = [str(script), *argv[1:]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _children(client: MlflowClient, parent_id: str) -> list:
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def _tested_as(how: str) -> list[str]:
    return [c for c in readme_commands(README.read_text()) if COMMANDS.get(c, ("",))[0] == how]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """One store and output folder for every README command, and the sweeps already run in it."""
    root = tmp_path_factory.mktemp("readme")
    store = f"sqlite:///{root / 'mlflow.db'}"
    return {"root": root, "store": store, "where": [f"tracking.uri={store}", f"paths.output_dir={root / 'outputs'}"],
            "sweeps": {}}  # fmt: skip


def _sweep(workspace: dict, command: str) -> tuple[str, str, int]:
    """Run a README sweep command once on the reduced budget: (sweep id, parent run id, points)."""
    if command not in workspace["sweeps"]:
        proc = _run([*shlex.split(command), *workspace["where"], *BUDGET])
        started = re.search(r"\[prunesweep\] sweep (sweep-\w+): (\d+) points; parent run (\w+)", proc.stdout)
        assert started, f"{command}: no sweep line in\n{proc.stdout[-2000:]}"
        workspace["sweeps"][command] = (started.group(1), started.group(3), int(started.group(2)))
    return workspace["sweeps"][command]


@pytest.mark.parametrize("command", _tested_as(COMPOSE))
def test_readme_command_composes(command, workspace):
    proc = _run([*shlex.split(command), *workspace["where"], "--cfg", "job"])
    assert "pruning:" in proc.stdout and "granularity:" in proc.stdout


@pytest.mark.parametrize("command", _tested_as(RUN))
def test_readme_sweep_runs_then_resumes(command, workspace):
    sweep_id, parent, points = _sweep(workspace, command)
    client = MlflowClient(tracking_uri=workspace["store"])
    children = _children(client, parent)
    assert len(children) == points and all(r.info.status == "FINISHED" for r in children)
    again = _run([*shlex.split(command), *workspace["where"], *BUDGET])  # typed again: resumes, adds no run
    assert sweep_id in again.stdout
    assert len(_children(client, parent)) == points, f"{command}: the relaunch added runs"


@pytest.mark.parametrize("command", _tested_as(REPORT))
def test_readme_report_command(command, workspace):
    sweep_id, _, _ = _sweep(workspace, "prunesweep +sweep=smoke")
    out = workspace["root"] / "report"
    argv = shlex.split(command.replace("sweep-<id>", sweep_id).replace("report/", str(out)))
    proc = _run([*argv, "--tracking-uri", workspace["store"]])
    assert "acc_finetuned" in proc.stdout
    assert (out / "acc_vs_sparsity.png").stat().st_size > 10_000


@pytest.mark.parametrize("command", _tested_as(HELP))
def test_readme_help_command(command):
    out = _run(shlex.split(command)).stdout
    assert "Most useful commands" in out and "is powered by Hydra" not in out


@pytest.mark.parametrize("command", _tested_as(REGISTER))
def test_readme_register_command(command, workspace):
    sweep_id, _, _ = _sweep(workspace, "prunesweep +sweep=smoke")
    argv = [*shlex.split(command.replace("sweep-<id>", sweep_id)), "--tracking-uri", workspace["store"]]
    client = MlflowClient(tracking_uri=workspace["store"])
    _run(argv)
    name = argv[argv.index("--register") + 1]
    versions = len(client.search_model_versions(f"name = '{name}'"))
    assert "already registered" in _run(argv).stdout or versions == 0
    assert len(client.search_model_versions(f"name = '{name}'")) == versions, "registering twice added a version"


@pytest.mark.parametrize("command", _tested_as(REPRODUCE))
def test_readme_reproduce_command(command, workspace):
    _, parent, _ = _sweep(workspace, "prunesweep +sweep=smoke")
    client = MlflowClient(tracking_uri=workspace["store"])
    run_id = _children(client, parent)[0].info.run_id
    proc = _run([*shlex.split(command.replace("<run_id>", run_id)), "--tracking-uri", workspace["store"]])
    assert "exact ones differing: none" in proc.stdout
