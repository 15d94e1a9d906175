"""Train an FFCLIP mapper (one model for every prompt) on CPU, GPU or TPU.

    python train.py --config configs/tiny.py --workdir runs/tiny                 # built-in tiny default, no download
    python train.py --config configs/ffhq.py --workdir runs/ffhq --config.train.batch_size=64 \
        --config.weights.generator=weights/stylegan2-ffhq --config.data_dir=data

Any config field can be overridden with --config.<path>=<value>. Rerunning the same command resumes from the last
checkpoint in WORKDIR; SIGTERM saves a checkpoint and exits. The loop: `ffclip_jax/train/loop.py`.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from ffclip_jax.errors import FFCLIPError
from ffclip_jax.train.config import parse_flags

config_flags.DEFINE_config_file("config", None, "config file with get_config() (configs/*.py)", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, logs, grids and exported weights")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unrecognised arguments: {' '.join(argv[1:])}")
    from ffclip_jax.train.loop import train_and_evaluate

    try:
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except FFCLIPError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
