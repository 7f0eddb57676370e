"""Curriculum configs as a function of scale, so ``configs/*.py`` stay one-liners over one definition.

``curriculum_config(scale, variant, cluster, resolution)``:
  scale       "tiny" (CPU, procedural data, minutes: the README's main job) | "small" (the same data and
              recipe, a 4x larger model trained 5x longer: under an hour on 2 CPU cores) | "tiny_real" (the tiny
              model on real data: every phase reads records, text from records; fill in the paths) | "small_real" (the
              small model on real data at 256 x 256, 17 frames, through the Wan2.1 VAE and umT5-XXL text: a pilot
              for one GPU) | "wan14b"
              (Wan2.1-I2V-14B init, 81 frames, real data)
  variant     "full" fine-tune | "lora" (paper: rank 256 on FFN layers, backbone frozen)
  cluster     "v5p" (fsdp over the slice, sequence parallel for 720p) | "h100" (fsdp within a node)
  resolution  "480p" (latent 21 x 60 x 104 per half) | "720p" (21 x 90 x 160 per half)
"""

from __future__ import annotations

import ml_collections

from dreamactor_jax import config_lib
from dreamactor_jax.data import sources

SCALES = ("tiny", "small", "tiny_real", "small_real", "wan14b")
LOCAL_SCALES = ("tiny", "small", "tiny_real", "small_real")  # small models, one host
REAL_SCALES = ("tiny_real", "small_real", "wan14b")  # every phase reads records, text from them (check_real_data)
# small_real: the small model on the Wan2.1 VAE's 16-channel latents (8x space, 4x time) of 256 x 256 clips of
# 17 frames, with umT5-XXL caption embeddings (4096 wide, 512 tokens) as Wan2.1 uses them.
SMALL_REAL = dict(model=dict(in_channels=2 * 16 + 4, out_channels=16, text_dim=4096, attention_block_q=256),
                  data=dict(frames=5, height=32, width=32, channels=16, text_len=512))
VARIANTS = ("full", "lora")
CLUSTERS = ("v5p", "h100")
RESOLUTIONS = {"480p": (60, 104), "720p": (90, 160)}
# The slice each wan14b preset is sized for, as (name, devices): the global batch divides over the mesh's batch
# axes there (no replicated activations; tests/test_curriculum.py builds each one). On a smaller slice of the
# same kind the batch still divides; on a larger one, scale config.stageN.data.batch_size with it.
DOCUMENTED_SLICES = {
    ("v5p", "480p"): ("v5p-16 (v5p:2x2x2)", 8),  # fsdp=8, one clip per chip
    ("v5p", "720p"): ("v5p-128 (v5p:4x4x4)", 64),  # fsdp=16 x sequence=4: one clip per 4 chips
    ("h100", "480p"): ("4 nodes of 8 H100", 32),  # data=4 x fsdp=8 (2 nodes: data=2)
    ("h100", "720p"): ("4 nodes of 8 H100", 32),
}
# The global batch of each (cluster, resolution): one clip per batch shard on the documented slice.
BATCH = {("v5p", "480p"): 8, ("v5p", "720p"): 16, ("h100", "480p"): 32, ("h100", "720p"): 32}

# The tiny curriculum's model: the 'tiny' preset (2 layers, head dim 32) four heads wide. The residual stream
# must carry a token's noise (2x2 latent pixels x C channels) for the velocity target besides what attention
# gathers from the reference and the motion half; at width 64 that is all of it, and the model learns neither
# (samples are noise). Width 128 with C = 12 (space-to-depth's exact 3·2² channels, no pure-noise padding
# channels) is the cheapest shape measured to learn within the main job's budget.
TINY_CHANNELS = 12
# Flash query blocks of 320: two per 640-token sample (9% faster per step than the preset's 160 at 4 heads).
TINY_MODEL = dict(num_attention_heads=4, ffn_dim=256, in_channels=2 * TINY_CHANNELS + 4, out_channels=TINY_CHANNELS,
                  attention_block_q=320)
# Clips of one second at 4 fps in which subjects cross 25-50% of the frame: copying the reference into every
# frame then scores poorly, so a model has to follow the motion to beat it.
TINY_MOTION = dict(fps=4.0, travel=(0.25, 0.5))
# The quality curriculum ('small'): the tiny recipe with twice the depth and a 4x FFN (about 2x the step time
# of tiny on 2 CPU cores), trained 5x longer. Its bar is a recognisable character, not just a blob in place.
SMALL_MODEL = dict(TINY_MODEL, num_layers=4, ffn_dim=512)
# Steps / clips per scale: (stage-1 steps, synthesis clips, stage-2 steps, eval pairs).
LOCAL_BUDGET = {"tiny": (500, 48, 150, 32), "small": (2500, 128, 750, 64)}


def parse_arg(arg: str | None, who: str) -> dict:
    """'lora,h100,720p' -> {variant: lora, cluster: h100, resolution: 720p}; unknown words are errors."""
    out = {}
    for word in filter(None, (arg or "").split(",")):
        key = ("variant" if word in VARIANTS else "cluster" if word in CLUSTERS
               else "resolution" if word in RESOLUTIONS else None)
        if key is None:
            raise ValueError(f"{who}: unknown argument {word!r}; choose from {VARIANTS}, {CLUSTERS}, "
                             f"{tuple(RESOLUTIONS)}")
        out[key] = word
    return out


def _train(tiny: bool, steps: int, real: bool) -> ml_collections.ConfigDict:
    # Previews: tiny runs sample clips once per stage, at its end (seconds on CPU); procedural runs preview held-out
    # procedural clips, real runs their own (precomputed umT5-captioned) training clips, which neither the
    # generator nor the toy text encoder can stand in for.
    return config_lib.train_section(steps=steps, log_every=25 if tiny else 100,
                                    checkpoint_every=100 if tiny else 1000, keep_period=0 if tiny else 10_000,
                                    preview_every=steps if tiny else 2000,
                                    preview_source="train" if real else "validation",
                                    preview_method="renoise" if tiny else "unipc")


def _sampler(tiny: bool) -> ml_collections.ConfigDict:
    # Tiny: 'renoise' with 8 steps. A model trained for minutes predicts the noise poorly; the ODE samplers carry
    # that error from step to step (block noise, SSIM ~0.2), renoise discards it (measured on held-out pairs
    # after 700 stage-1 steps: unipc-12 15.2 dB / SSIM 0.23, renoise-12 16.3 dB / 0.39; fewer steps trade
    # SSIM for keypoints). Real runs: UniPC, 40 steps, CFG 5 (Wan's defaults).
    return ml_collections.ConfigDict(dict(method="renoise" if tiny else "unipc", steps=8 if tiny else 40,
                                          shift=3.0, guidance=1.0 if tiny else 5.0))


def curriculum_config(scale: str = "tiny", variant: str = "full", cluster: str = "v5p",
                      resolution: str = "480p") -> ml_collections.ConfigDict:
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}; choose one of {SCALES}")
    tiny = scale in LOCAL_SCALES  # below, "tiny" means a local scale: CPU-sized
    real = scale in REAL_SCALES
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.real_data = real  # True: a phase that would read procedural data or the toy text encoder is an error
    model = {"remat": "none" if tiny else "full", "attention": "auto"}
    if tiny:
        model.update(SMALL_MODEL if scale in ("small", "small_real") else TINY_MODEL)
    if scale == "small_real":
        model.update(SMALL_REAL["model"])
    if variant == "lora":
        model.update(lora_rank=256 if not tiny else 8)
    c.model = config_lib.model_section("tiny" if tiny else "wan2.1-i2v-14b", **model)
    # Tiny: σ shifted towards noise as the sampler's schedule is (shift 3), given regions fed clean at t = 0
    # (measured: both learn faster than uniform σ with noised given regions; see TINY_MODEL).
    c.objective = config_lib.objective_section(sigma_sampler="uniform" if tiny else "logit_normal", shift=3.0,
                                               text_dropout=0.1, given_region="clean" if tiny else "noised")
    if tiny:
        c.mesh = config_lib.mesh_section(data=1)
        h, w = 16, 16
    else:
        h, w = RESOLUTIONS[resolution]
        # v5p: shard everything over the slice; 720p doubles tokens, so split them over 'sequence' too.
        # H100 nodes: fsdp inside a node (NVLink), data across nodes.
        c.mesh = (config_lib.mesh_section(data=1, fsdp=-1, sequence=1 if resolution == "480p" else 4)
                  if cluster == "v5p" else config_lib.mesh_section(data=-1, fsdp=8))
    data = dict(frames=5 if tiny else 21, height=h, width=w, text_len=8 if tiny else 512,
                motion_masked_frames=1 if tiny else 4, batch_size=4 if tiny else BATCH[cluster, resolution],
                source="records" if real else "procedural", channels=TINY_CHANNELS if tiny else 16,
                text_source="records" if real else "toy")
    if scale == "small_real":
        data.update(SMALL_REAL["data"])
    lr = 5e-5 if not tiny else 3e-3
    budget = {"tiny_real": "tiny", "small_real": "small"}.get(scale, scale)
    steps1, clips, steps2, pairs = LOCAL_BUDGET.get(budget, (50_000, 60_000, 50_000, 200))
    c.stage1 = ml_collections.ConfigDict()
    c.stage1.data = sources.data_section(stage=1, **data)
    if tiny:
        c.stage1.data.procedural.update(TINY_MOTION)
    c.stage1.data.records_dir = "gs://BUCKET/latents/stage1" if real else ""  # precomputed latent records
    if not tiny or scale == "small_real":
        # the Wan2.1 VAE (8x space, 4x time, 16 channels); weights "" reads $DREAMACTOR_WAN_VAE, else errors
        c.stage1.data.codec.update(name="wan_vae", spatial_factor=8)
    c.stage1.optim = config_lib.optim_section(lr=lr, warmup_steps=20 if tiny else 500,
                                              schedule="cosine" if tiny else "constant", final_lr_fraction=0.1)
    c.stage1.train = _train(tiny, steps1, real)

    c.synthesis = ml_collections.ConfigDict()
    c.synthesis.num_clips = clips  # driving clips to animate with new identities
    c.synthesis.batch_size = 16 if tiny else 8
    c.synthesis.shard_size = 32 if tiny else 1000  # clips per record shard (the unit of resumption)
    c.synthesis.threshold = 0.4  # acceptance: mean of pose and appearance consistency (see synthesis.py)
    c.synthesis.index_offset = 5_000_000  # driving clips are train-split clips beyond stage 1's first epoch
    c.synthesis.weights = "params"  # "params" | "ema"
    c.synthesis.sampler = _sampler(tiny)
    # Real data (synthesis_records.py): driving clips from records ("" = config.stage1.data.records_dir), new
    # identities from a folder of images, acceptance scored with a pose estimator (ONNX; detector optional).
    c.synthesis.source = "records" if real else "procedural"
    c.synthesis.driving_records = ""
    c.synthesis.reference_pool = "gs://BUCKET/reference_pool" if real else ""
    c.synthesis.pose_model = ""
    c.synthesis.detector = ""

    c.stage2 = ml_collections.ConfigDict()
    c.stage2.data = sources.data_section(stage=2, **dict(data, source="records"))
    if tiny:
        c.stage2.data.procedural.update(TINY_MOTION)  # the pose_mix batches
    c.stage2.data.codec = ml_collections.ConfigDict(c.stage1.data.codec.to_dict())
    c.stage2.data.pose_mix = 0.25  # fraction of stage-2 batches that are stage-1 pose batches
    c.stage2.optim = config_lib.optim_section(lr=lr / 2 if tiny else lr, warmup_steps=10 if tiny else 500,
                                              schedule="cosine" if tiny else "constant", final_lr_fraction=0.1)
    c.stage2.train = _train(tiny, steps2, real)

    c.export = ml_collections.ConfigDict(dict(dtype="fp32" if tiny else "bf16", max_shard_size="5GB",
                                              weights="params"))
    c.eval = ml_collections.ConfigDict()
    c.eval.num_pairs = pairs
    c.eval.batch_size = 16 if tiny else 4
    c.eval.grid_pairs = 4
    c.eval.weights = "params"
    c.eval.sampler = _sampler(tiny)
    # Real data (evaluation_records.py): held-out clips; the pose estimator defaults to synthesis's.
    c.eval.source = "records" if real else "procedural"
    c.eval.records_dir = "gs://BUCKET/latents/test" if real else ""
    c.eval.pose_model = ""
    c.eval.detector = ""
    return c


def check_real_data(c: ml_collections.ConfigDict) -> None:
    """A ``real_data`` curriculum must read records in every phase and text from records: errors name the field."""
    if not c.get("real_data", False):
        return
    need = {"stage1.data.source": "records", "stage2.data.source": "records", "synthesis.source": "records",
            "eval.source": "records", "stage1.data.text_source": "records", "stage2.data.text_source": "records"}
    for field, want in need.items():
        node = c
        for part in field.split("."):
            node = node.get(part) if node is not None else None
        if node != want:
            raise ValueError(f"config.{field}={node!r} in a real_data curriculum: it must be {want!r} (a real-data "
                             "run never falls back to procedural data or the toy text encoder)")
    for field in ("stage1.data.records_dir", "synthesis.reference_pool", "eval.records_dir"):
        node = c
        for part in field.split("."):
            node = node.get(part)
        if not node:
            raise ValueError(f"config.{field} is empty in a real_data curriculum")
