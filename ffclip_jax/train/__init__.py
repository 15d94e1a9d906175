"""FFCLIP training: config checks (`config`), the sharding rules (`ffclip_jax.sharding`), networks, the trainable state,
the sharded step, checkpoints and export, and the loop (`loop.train_and_evaluate`, what `train.py` runs).
The public pieces are re-exported here: `from ffclip_jax import train as tl; tl.make_train_step(...)`."""
from ffclip_jax.sharding import (DATA_AXIS, any_process, batch_sharding, frozen_sharding, initialize_distributed,
                                 make_mesh, put, replicated, state_sharding)
from ffclip_jax.train.checkpoint import (checkpoint_manager, export_weights, load_run_config, read_best,
                                         restore_checkpoint, restore_newest, restore_params, save_checkpoint)
from ffclip_jax.train.config import LOSS_TERMS, TERM_NETWORK, active_terms, check_weights, needed_networks, resolve_batch
from ffclip_jax.train.loop import train_and_evaluate
from ffclip_jax.train.networks import Networks, init_mapper_params, load_networks
from ffclip_jax.train.state import TrainState, abstract_state, create_state, lr_schedule, make_optimizer, mapper_init
from ffclip_jax.train.step import (StepOptions, eval_losses, loss_terms, make_eval_step, make_train_step, render_edits,
                                   step_options, train_step)
