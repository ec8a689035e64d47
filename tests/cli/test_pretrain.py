"""`dscoder pretrain` table: bad input is one error line and exit 2, with nothing written under --out."""
import pytest

from conftest import PRETRAIN, Row, check, copy_run, flip_byte, ids

BASE = [*PRETRAIN, "--save-every", "0"]
RUN = [*BASE, "--out", "{tmp}/run"]

ROWS = [
    Row([*RUN, "--lr", "nan"], 2, "argument --lr: expected a finite number, got 'nan'", absent=["{tmp}/run"],
        id="--lr nan"),
    Row([*RUN, "--warmup", "-1"], 2, "argument --warmup: must be >= 0, got '-1'", absent=["{tmp}/run"],
        id="--warmup -1"),
    Row([*RUN, "--set", "num_hidden_layers=two"], 2, "num_hidden_layers takes an integer, got 'two'",
        absent=["{tmp}/run"], id="string in --set"),
    Row([*RUN, "--set", "num_layers=2"], 2, "unknown field(s) num_layers", absent=["{tmp}/run"],
        id="unknown config field"),
    Row([*BASE, "--out", "{tmp}/afile"], 2, "'{tmp}/afile' exists and is not a folder", {"{tmp}/afile": "x"},
        id="--out is a file"),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_pretrain(row, cli_env, tmp_path):
    check(row, cli_env, tmp_path)


def _damage_every_checkpoint(env, tmp):
    for weights in sorted(copy_run(env, tmp).glob("checkpoints/step-*/model.safetensors")):
        flip_byte(weights)


# rows on a finished 2-step run (copied first): refusals leave it as it was
RESUME_ROWS = [
    Row([*BASE, "--out", "{tmp}/run", "--resume", "--steps", "1"], 2, "would move the run backward",
        prepare=copy_run, id="resume backward"),
    Row([*BASE, "--out", "{tmp}/run", "--resume", "--steps", "3"], 2, "no usable checkpoint",
        prepare=_damage_every_checkpoint, absent=["{tmp}/run/checkpoints/step-3", "{tmp}/run/.lock"],
        id="resume with every checkpoint damaged"),
]


@pytest.mark.parametrize("row", RESUME_ROWS, ids=ids(RESUME_ROWS))
def test_pretrain_resume(row, cli_env, pretrained_run, tmp_path):
    check(row, cli_env, tmp_path)
