"""The shared base of every training config: each field the trainer reads, with upstream FFCLIP's FFHQ values
(`ffhq.py` only adds paths). A new config starts from `default.get_config()` and changes what differs; a new field
goes here with a comment, and is read in `ffclip_jax/train/`.
"""
import ml_collections

from ffclip_jax.weights.registry import WEIGHTS_NETWORKS


def get_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with upstream FFCLIP's (FFHQ) values."""
    c = ml_collections.ConfigDict()
    c.domain = "ffhq"              # ffclip_latents dataset config (ffhq, car, church, custom)
    c.data_dir = ""                # TFDS data dir holding ffclip_latents/<domain> (ffclip data build)
    c.prompts = "ffhq"             # built-in prompt list name or a file, one prompt per line
    c.prompt_cache_dir = ""        # CLIP text-embedding cache ("" = WORKDIR/prompt_cache)
    c.init_from = ""               # converted FFCLIP directory (convert_weights ffclip) to fine-tune from
    c.tiny = False                 # build random tiny networks + synthetic latents in WORKDIR/tiny_assets
    c.seed = 0
    c.distributed = ml_collections.ConfigDict()  # multi-host: jax.distributed.initialize() before anything else
    c.distributed.enabled = False
    c.distributed.coordinator_address = ""  # "" = auto-detected (TPU slices, SLURM, Open MPI, ...)
    c.distributed.num_processes = 0         # 0 = auto-detected
    c.distributed.process_id = -1           # -1 = auto-detected
    c.jit_cache_dir = ""           # persistent XLA compilation cache ("" = off)

    c.weights = ml_collections.ConfigDict()  # converted directories; "" = not used (its loss weight must be 0);
    for name in WEIGHTS_NETWORKS:             # e4e is only recorded in the export, for editing photos
        c.weights[name] = ""

    c.loss = ml_collections.ConfigDict(dict(clip=1.0, embedding=1.0, latent=1.6, id=0.9, background=2.0, moco=0.0,
                                            image_l1=0.0))

    c.model = ml_collections.ConfigDict()
    c.model.mapper_blocks = 4
    c.model.compute_dtype = "float32"  # "bfloat16": the frozen networks compute in bf16; the (small) mapper, the
    #                                    latents, the losses, parameters and Adam stay float32
    c.model.remat = False              # rematerialise generator blocks in the backward pass (less memory)
    c.model.noise_mode = "const"       # generator noise: upstream's fixed buffers ("const") or "random"

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 0             # global batch; 0 = per_device_batch_size x device count
    c.train.per_device_batch_size = 8
    c.train.accum_steps = 1            # gradient accumulation: the global batch is split into this many micro-batches
    c.train.num_epochs = 20
    c.train.num_steps = 0              # > 0 overrides num_epochs
    c.train.learning_rate = 5e-4
    c.train.adam_eps = 1e-8
    c.train.lr_milestones = (0.5, 0.75, 0.9, 0.95)  # fractions of training (MultiStepLR)
    c.train.lr_gamma = 0.5
    c.train.grad_clip_norm = 5.0
    c.train.prefetch = 2

    c.sharding = ml_collections.ConfigDict()
    c.sharding.frozen = "replicate"    # "replicate" or "fsdp" (shard large frozen arrays over the data axis)
    c.sharding.fsdp_min_size = 2 ** 20

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 50             # TensorBoard scalars and progress-bar metrics
    c.log.checkpoint_every_steps = 1000
    c.log.keep_checkpoints = 3         # latest K (the best by validation loss is kept as well)

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 2000
    c.eval.num_examples = 64           # test latents in the validation loss
    c.eval.batch_size = 0              # 0 = the training batch size
    c.eval.grid_rows = 4               # test latents in the PNG grid
    c.eval.grid_prompts = ("Bald", "Blue eyes", "Purple hair", "Sad", "Taylor Swift")
    return c


def moco_domain(domain: str) -> ml_collections.ConfigDict:
    """get_config() for a domain without faces (cars, churches): its latents (data/ffclip_latents/<domain>), prompt
    list and generator (weights/stylegan2-<domain>), and MoCo v2 feature similarity (weight 0.5, e4e's car setting)
    in place of the face-only ArcFace identity and hair-parsing background losses."""
    c = get_config()
    c.domain = domain
    c.prompts = domain
    c.data_dir = "data"
    c.weights.generator = f"weights/stylegan2-{domain}"
    c.weights.clip = "weights/clip"
    c.weights.moco = "weights/moco"
    c.loss.id = 0.0
    c.loss.background = 0.0
    c.loss.moco = 0.5
    return c
