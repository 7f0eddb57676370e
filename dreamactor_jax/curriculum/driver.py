"""The curriculum driver: phases with done-markers, resumable, one workdir.

``run(config, workdir)`` runs, in order, skipping phases already complete::

  stage1/     pose-driven training (self-supervised: reference = first frame, motion = pose render)
  synthesis/  the frozen stage-1 model makes pseudo cross-identity triplets -> latent records
  stage2/     RGB-driven training on the triplets (optionally mixed with pose batches), from stage 1
  export/     the stage-2 weights in diffusers' WanTransformer3DModel layout (safetensors)
  eval/       untrained vs stage 1 vs stage 2 on held-out cross-identity pairs: table + video grid

A phase is complete when ``<phase>/DONE.json`` exists (written last, atomically).
Training phases resume from their own checkpoints, synthesis from its finished
shards, so rerunning after a crash continues where it stopped. The workdir
keeps the curriculum config; a different config is refused, naming the fields
that differ, unless ``force``.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import ml_collections
import numpy as np

from dreamactor_jax import fs
from dreamactor_jax.config_lib import stage_config
from dreamactor_jax.curriculum import evaluation, synthesis
from dreamactor_jax.curriculum.presets import check_real_data
from dreamactor_jax.data import records as records_lib
from dreamactor_jax.data.components import Components, components
from dreamactor_jax.diffusion.animator import Animator
from dreamactor_jax.diffusion.sampler import SamplerConfig
from dreamactor_jax.models.build import init_params
from dreamactor_jax.train import checkpoint, observe
from dreamactor_jax.train import loop as train_loop

PHASES = ("stage1", "synthesis", "stage2", "export", "eval")
CONFIG_FILE = "curriculum_config.json"


class ConfigMismatchError(ValueError):
    pass


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str, force: bool = False) -> None:
    """Stores the config in a new workdir; refuses a workdir holding a run of a different config."""
    path = fs.join(workdir, CONFIG_FILE)
    current = json.loads(config.to_json_best_effort())
    if fs.exists(path):
        stored = json.loads(fs.read_text(path))
        a, b = _flatten(stored), _flatten(current)
        diff = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
        if diff and not force:
            details = "; ".join(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in diff[:20])
            raise ConfigMismatchError(f"{workdir} holds a curriculum run with a different config; differing fields "
                                      f"({len(diff)}): {details}. Use another workdir or --force.")
        if not diff:
            return
    fs.makedirs(workdir)
    fs.write_text(path, json.dumps(current, indent=2))


def _done(workdir: str, phase: str) -> dict | None:
    path = fs.join(workdir, phase, "DONE.json")
    return json.loads(fs.read_text(path)) if fs.exists(path) else None


def _mark_done(workdir: str, phase: str, summary: dict) -> None:
    d = fs.join(workdir, phase)
    fs.makedirs(d)
    if jax.process_index() == 0:
        fs.write_text(fs.join(d, "DONE.json"), json.dumps(summary, indent=2))


def _params(workdir: str, phase: str, weights: str = "params") -> dict:
    """The final params (or EMA params, when the run kept an EMA) of a training phase."""
    ckpt = fs.join(workdir, phase, "checkpoints")
    if weights == "ema":
        try:
            return checkpoint.restore_item(ckpt, "ema")
        except FileNotFoundError:  # the run kept no EMA
            pass
    return checkpoint.restore_item(ckpt, "params")


def _sampler(c: ml_collections.ConfigDict, objective) -> SamplerConfig:
    return SamplerConfig(method=c.method, steps=c.steps, shift=c.shift, guidance=c.guidance,
                         given_region=objective.given_region)


def _animator(comp: Components, params, scfg) -> Animator:
    """The sampler for a stage's resolved components (its codec with weights and tiling, its text encoder)."""
    return Animator(comp.model, params, comp.codec, scfg, comp.text,
                    masked_frames=comp.config.data.motion_masked_frames)


def _estimator(section: ml_collections.ConfigDict, who: str):
    """The pose estimator a records phase scores with (``<section>.pose_model`` / ``detector``): required."""
    if not section.get("pose_model"):
        raise ValueError(f"config.{who}.source='records' scores pose consistency with a pose estimator: set "
                         f"config.{who}.pose_model (an RTMPose / DWPose ONNX file; see data/pose_estimator.py)")
    from dreamactor_jax.data import pose_estimator

    return pose_estimator.PoseEstimator(section.pose_model, section.get("detector") or None)


def _image_encoder(comp: Components):
    """The CLIP image encoder an I2V model's records phases need (``config.data.clip_dir``), else None."""
    if not comp.model.image_dim:
        return None
    d = comp.config.data
    if not d.get("clip_dir"):
        raise ValueError(f"the model is an I2V model (image_dim={comp.model.image_dim}): synthesis and eval encode new "
                         "reference images with CLIP; set config.stage1.data.clip_dir (a local CLIP vision checkpoint)")
    from dreamactor_jax.data.clip_image import CLIPImageEncoder

    return CLIPImageEncoder(d.clip_dir)


def _pixel_animator(anim: Animator, codec, params, image_encoder=None):
    """``(reference (B,H,W,3), motion (B,T,H,W,3), text, text_mask, rng) -> video`` for records evaluation."""

    def run(ref, mot, text, tmask, rng):
        r = np.asarray(codec.encode(ref[:, None].astype(np.float32)), np.float32)
        m = np.asarray(codec.encode(mot.astype(np.float32)), np.float32)
        image = None if image_encoder is None else image_encoder.encode_batch(ref)
        lat = anim.latents(r, m, anim.valid_mask(m.shape[0], m.shape[1]), text, tmask, rng, params=params,
                           image_bme=image)
        return np.clip(np.asarray(codec.decode(np.asarray(lat))), -1.0, 1.0)

    return run


def _records_source(path: str, field: str) -> records_lib.RecordSource:
    if not path:
        raise ValueError(f"config.{field} is empty: records phases need a directory of records")
    return records_lib.RecordSource(os.path.expanduser(path))


def run_phase(config: ml_collections.ConfigDict, workdir: str, phase: str) -> dict:
    t0 = time.perf_counter()
    pdir = fs.join(workdir, phase)
    if phase in ("stage1", "stage2"):
        sc = stage_config(config, phase)
        if phase == "stage2":
            sc.data.records_dir = fs.join(workdir, "synthesis", "records")
            sc.train.init_from = fs.join(workdir, "stage1", "checkpoints")
            if sc.data.pose_mix > 0 and not sc.data.get("pose_mix_records") and config.stage1.data.source == "records":
                sc.data.pose_mix_records = config.stage1.data.records_dir  # pose batches: the run's stage-1 records
        out = train_loop.run(sc, pdir)
        summary = {"steps": out["steps"], "final_loss": out["final_loss"], "checkpoints": out["checkpoints"]}
    elif phase == "synthesis":
        comp = components(stage_config(config, "stage1"))
        params = _params(workdir, "stage1", config.synthesis.weights)
        anim = _animator(comp, params, _sampler(config.synthesis.sampler, config.objective))
        s = config.synthesis
        if s.get("source", "procedural") == "records":
            from dreamactor_jax.curriculum import synthesis_records

            source = _records_source(s.get("driving_records") or config.stage1.data.records_dir,
                                     "synthesis.driving_records (or config.stage1.data.records_dir)")
            pool = synthesis_records.load_pool(s.get("reference_pool", ""), comp.height, comp.width)
            summary = synthesis_records.run_synthesis_records(
                anim, comp.codec, comp.text, _estimator(s, "synthesis"), source, pool, s, pdir, config.seed,
                text_from_records=config.stage1.data.get("text_source", "toy") == "records",
                image_encoder=_image_encoder(comp))
        else:
            summary = synthesis.run_synthesis(anim, comp.codec, comp.text, comp.procedural("train"), s, pdir,
                                              config.seed)
        if summary["accepted"] == 0:
            raise RuntimeError(f"synthesis accepted none of {summary['clips']} clips (threshold "
                               f"{config.synthesis.threshold}); see {pdir}/acceptance-*.jsonl")
    elif phase == "export":
        from dreamactor_jax.convert import export as export_lib

        out_dir = fs.join(pdir, "diffusers")
        export_lib.export_checkpoint(fs.join(workdir, "stage2", "checkpoints"), out_dir,
                                     weights=config.export.weights, dtype=config.export.dtype,
                                     max_shard_size=config.export.max_shard_size)
        summary = {"out": out_dir, "files": fs.listdir(out_dir)}
    elif phase == "eval":
        e = config.eval
        scfg = _sampler(e.sampler, config.objective)
        comp = components(stage_config(config, "stage1"))
        records = e.get("source", "procedural") == "records"
        # Every model that exists: the starting point always (on records, the imported base model the run starts
        # from when it has one, else an untrained init); a stage once its phase is done (``--only=eval`` after
        # stage 1 compares untrained with stage 1).
        # One Animator (one compiled sampler) for every model: the stages share architecture, codec and sizes.
        anim = _animator(comp, None, scfg)
        if records and config.stage1.train.get("init_from"):
            weights = {"base": (checkpoint.restore_item(config.stage1.train.init_from, "params"), "pose")}
        else:
            weights = {"untrained": (init_params(comp.model, config.seed)[1], "pose")}
        if _done(workdir, "stage1"):
            weights["stage1"] = (_params(workdir, "stage1", e.weights), "pose")
        if _done(workdir, "stage2"):
            weights["stage2"] = (_params(workdir, "stage2", e.weights), "rgb")
        if records:
            from dreamactor_jax.curriculum import evaluation_records

            clips = evaluation_records.load_clips(_records_source(e.get("records_dir", ""), "eval.records_dir"),
                                                  comp.codec, e.num_pairs)
            est = _estimator(e if e.get("pose_model") else config.synthesis, "eval")
            text = None if config.stage1.data.get("text_source", "toy") == "records" else comp.text
            clip = _image_encoder(comp)
            models = {n: (_pixel_animator(anim, comp.codec, p, clip), kind) for n, (p, kind) in weights.items()}
            table = evaluation_records.evaluate_records(models, clips, est, e.batch_size, pdir, config.seed,
                                                        text_encoder=text)
            summary = evaluation_records.summary(table)
        else:
            animators = {n: (functools.partial(anim, params=p), kind) for n, (p, kind) in weights.items()}
            pcfg = comp.procedural("test")
            # Clean and estimated-pose settings plus the copy-reference / background baselines; DONE.json keeps a
            # short summary, the full table is eval/table.json.
            table = evaluation.evaluate(animators, pcfg, e.num_pairs, e.batch_size, pdir, config.seed, e.grid_pairs,
                                        estimator_seed=e.get("estimator_seed", None))
            summary = evaluation.summary(table)
    else:
        raise ValueError(f"unknown phase {phase!r}; phases are {PHASES}")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    _mark_done(workdir, phase, summary)
    return summary


def run(config: ml_collections.ConfigDict, workdir: str, only: str | None = None, force: bool = False) -> dict:
    """Runs every phase not yet done (or just ``only``); returns {phase: summary}."""
    if only is not None and only not in PHASES:
        raise ValueError(f"--only={only!r}; choose one of {PHASES}")
    check_real_data(config)
    check_workdir_config(config, workdir, force)
    if jax.process_index() == 0:
        print(f"watch: tensorboard --logdir={workdir}  (each training phase logs to <phase>/tensorboard)", flush=True)
    out = {}
    for phase in PHASES if only is None else (only,):
        done = _done(workdir, phase)
        if done is not None and only is None:
            print(f"[{phase}] already done ({done.get('seconds', '?')} s): skipping", flush=True)
            out[phase] = dict(done, skipped=True)
            continue
        print(f"[{phase}] starting", flush=True)
        out[phase] = run_phase(config, workdir, phase)
        print(f"[{phase}] done in {out[phase]['seconds']} s: "
              f"{ {k: v for k, v in out[phase].items() if k not in ('results', 'files')} }", flush=True)
    if "eval" in out:
        print(fs.read_text(fs.join(workdir, "eval", "table.md")), flush=True)
    rows = summary_rows(workdir, out)
    if jax.process_index() == 0:
        observe.write_json(fs.join(workdir, observe.SUMMARY_FILE), {"workdir": fs.absolute(workdir),
                                                                          "phases": rows})
        rows = [dict(r, outputs=[os.path.relpath(p, workdir) for p in r["outputs"]]) for r in rows]
        print(f"curriculum summary of {workdir} ({observe.SUMMARY_FILE}; paths relative to it):\n"
              + observe.summary_table(rows, ("phase", "status", "time", "steps", "final loss", "outputs")), flush=True)
    return out


def summary_rows(workdir: str, out: dict) -> list[dict]:
    """One row per phase run or skipped now: status, time, steps, final loss and where its outputs are."""
    rows = []
    for phase, s in out.items():
        row = {"phase": phase, "status": "skipped (done before)" if s.get("skipped") else "done",
               "time": s.get("seconds"), "steps": s.get("steps"), "final loss": s.get("final_loss"), "outputs": []}
        pdir = fs.join(workdir, phase)
        if phase in ("stage1", "stage2"):
            row["outputs"] = [s.get("checkpoints", fs.join(pdir, "checkpoints"))]
            if fs.isdir(fs.join(pdir, observe.TENSORBOARD_DIR)):
                row["outputs"].append(fs.join(pdir, observe.TENSORBOARD_DIR))
        elif phase == "synthesis":
            row["steps"] = f"{s.get('accepted', '?')}/{s.get('clips', '?')} clips accepted"
            row["outputs"] = [fs.join(pdir, "records")]
        elif phase == "export":
            row["outputs"] = [s.get("out", fs.join(pdir, "diffusers"))]
        elif phase == "eval":
            row["outputs"] = [fs.join(pdir, n) for n in ("table.md", "grid.gif")]
        rows.append(row)
    return rows
