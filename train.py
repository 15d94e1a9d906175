r"""Train an FFCLIP mapper (one model for every prompt) on CPU, GPU or TPU.

    python train.py --config configs/tiny.py --workdir runs/tiny       # built-in tiny default, no download
    python train.py --config configs/ffhq.py --workdir runs/ffhq --config.train.batch_size=64 \
        --config.weights.generator=weights/stylegan2-ffhq --config.data_dir=data

Configs are code: configs/ffhq.py, car.py, church.py and tiny.py start from configs/default.py, which defines every
field with its upstream value and a comment. Any field can be overridden with --config.<path>=<value>.
Rerunning the same command resumes from the newest checkpoint in WORKDIR that restores (a damaged one is named,
moved aside and skipped); SIGTERM saves a checkpoint and exits. Logs stay at WARNING; --verbosity=0 shows INFO.
The command line: ffclip_jax/cli/train.py; the loop: ffclip_jax/train/loop.py.
"""
from ffclip_jax.cli.train import main

if __name__ == "__main__":
    main()
