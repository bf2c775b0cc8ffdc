"""Issue 27, item 3 (values and the environment): every bad value refused in one line before anything is written, a diverging
run stopped, SIGTERM and an unusable --out reported in one line."""
import signal
import time

import pytest

from helpers import background_cli, cli, wait_until
from lottery_nb.errors import LotteryError
from lottery_nb.lottery import lottery_config, run_lottery
from lottery_nb.runs import RunContext
from lottery_nb.sparse import run_sparse

RUN = ("run", "--preset", "digits_lenet", "--budget", "smoke", "--rounds", "1", "--quiet")


def one_line_error(r):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    return r.returncode == 2 and len(lines) == 1 and lines[0].startswith("lottery_nb: error: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize("value", ["lr=nan", "lr=NaN", "lr=abc", "lr=Infinity", "lr=-1", "gamma=NaN", "momentum=nan", "momentum=-0.5",
                                   "weight_decay=-1", "layer_fractions=abc", 'layer_fractions=[["fc.weight"]]',
                                   'layer_fractions=[["nope.weight", 0.1]]'])
def test_a_bad_value_is_one_line_and_nothing_is_written(tmp_path, value):
    r = cli(*RUN, "--set", value, "--out", str(tmp_path / "out"))
    assert one_line_error(r), (value, r.stderr)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()], value


def test_a_negative_seed_is_refused(tmp_path):
    r = cli(*RUN, "--seed", "-1", "--out", str(tmp_path / "out"))
    assert one_line_error(r) and "seed must be an integer >= 0" in r.stderr, r.stderr


@pytest.mark.parametrize("make", [lambda: lottery_config("digits_lenet", "none", 1.5), lambda: lottery_config("digits_lenet", "none", "0"),
                                  lambda: run_sparse("digits_lenet", "rigl", "0.9", 0, budget="smoke")])
def test_the_api_refuses_wrong_types(make):
    with pytest.raises(LotteryError): make()


def test_a_diverging_run_stops_with_one_line_and_keeps_no_round(tmp_path):
    r = cli(*RUN, "--set", "lr=1e30", "--out", str(tmp_path))
    assert one_line_error(r) and "training diverged" in r.stderr, r.stderr
    assert not list(tmp_path.glob("*/round_*/metrics.json"))


def test_sigterm_says_where_the_run_resumes_and_exits_143(tmp_path):
    args = ("run", "--preset", "digits_lenet", "--budget", "smoke", "--set", "epochs=5000", "--rounds", "0", "--out", str(tmp_path), "--quiet")
    with background_cli(*args) as proc:
        wait_until(lambda: list(tmp_path.glob("*/round_00/checkpoint.pt")), proc, "an epoch checkpoint")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated (SIGTERM); the same command resumes round 0 after epoch" in err, err
    assert "Traceback" not in err and list(tmp_path.glob("*/round_00/checkpoint.pt"))


def test_an_out_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    r = cli(*RUN, "--out", str(tmp_path / "a_file" / "runs"))
    assert one_line_error(r) and "Not a directory" in r.stderr, r.stderr


def mnist_files(root, images: bytes | None = None):
    "MNIST's four files in torchvision's layout, with whole headers; the images are `images` (default: 1,000 bytes of 60,000 images)."
    raw = root / "MNIST" / "raw"; raw.mkdir(parents=True)
    for split, n in (("train", 60000), ("t10k", 10000)):
        head = bytes.fromhex("00000803") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        (raw / f"{split}-images-idx3-ubyte").write_bytes(head + bytes(1000) if images is None else images)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(bytes.fromhex("00000801") + n.to_bytes(4, "big") + bytes(n))


@pytest.mark.parametrize("kind", ["truncated", "zero-filled"])
def test_damaged_data_files_are_one_line_and_nothing_is_written(tmp_path, kind):
    mnist_files(tmp_path / "data", None if kind == "truncated" else bytes(47_040_016))
    r = cli("run", "--preset", "mnist_lenet", "--budget", "smoke", "--rounds", "0", "--quiet", "--data-root", str(tmp_path / "data"),
            "--out", str(tmp_path / "out"))
    assert one_line_error(r) and "'mnist' files in" in r.stderr and "cannot be read" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
