"""Self-bootstrapped synthesis: the frozen stage-1 model makes pseudo cross-identity pairs.

For each driving clip (a real clip: here, a procedural train clip with its pose
render), a *different* identity's reference image is animated with the clip's
pose by the stage-1 model. The result — a new character performing the real
clip's motion — becomes the stage-2 driving video, paired with the real clip's
first frame (reference) and the real clip itself (target).

Automatic acceptance score (the paper uses Video-Bench > 4.5 plus review; we
need something computable): the mean of

* pose consistency: :func:`dreamactor_jax.eval.metrics.keypoint_consistency`
  of the synthetic video against the driving clip's keypoints (is the body
  where the motion puts it), and
* appearance consistency: :func:`~dreamactor_jax.eval.metrics.appearance_consistency`
  between the synthetic frames and the new identity's reference (does it look
  like the character it should animate).

Pairs scoring at least ``threshold`` are written; every clip's scores go to
its shard's ``acceptance-NNNNN.jsonl`` and the acceptance rate, summed over all
processes, to the phase summary.

Sharded across processes (process p handles shards p, p + n, ...) and
resumable: a shard's acceptance log is written (to a temporary name, then
renamed) after its records, so a restart skips the shards that have a log.
"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np

from dreamactor_jax import fs
from dreamactor_jax.data import records
from dreamactor_jax.data.procedural import dataset as proc
from dreamactor_jax.diffusion.animator import Animator
from dreamactor_jax.eval import metrics
from dreamactor_jax.parallel import distributed


def score(synthetic_thw3: np.ndarray, example: dict) -> dict:
    pose = metrics.keypoint_consistency(synthetic_thw3, example["keypoints"], example["keypoint_mask"],
                                        example["cross_reference"])
    look = metrics.appearance_consistency(synthetic_thw3, example["cross_reference"])
    return {"pose_consistency": pose, "appearance_consistency": look, "score": 0.5 * (pose + look)}


def run_shards(out_dir: str, num_clips: int, shard_size: int, make_shard) -> dict:
    """The shard loop of both synthesis phases: sharded over processes, resumable, totals over all processes.

    ``make_shard(lo, hi) -> (latent examples to write, acceptance rows)`` for clips ``lo..hi-1``; a row holds
    ``accepted``. Returns clips, accepted, acceptance_rate and the records directory.
    """
    rec_dir = fs.join(out_dir, "records")
    fs.makedirs(rec_dir)
    n_shards = -(-num_clips // shard_size)
    accepted = total = 0
    for shard in range(jax.process_index(), n_shards, jax.process_count()):
        path = fs.join(rec_dir, records.shard_name("synthesis", shard, n_shards))
        log_path = fs.join(out_dir, f"acceptance-{shard:05d}.jsonl")
        if fs.exists(log_path):  # finished before a restart (the log is written after the records)
            rows = [json.loads(x) for x in fs.read_text(log_path).splitlines()]
        else:
            examples, rows = make_shard(shard * shard_size, min((shard + 1) * shard_size, num_clips))
            if examples:  # a shard where nothing passed leaves only its acceptance log
                records.write_file(path, (records.encode_record(dict(ex, kind="latents")) for ex in examples))
            fs.write_text(log_path, "".join(json.dumps(r) + "\n" for r in rows))
        total += len(rows)
        accepted += sum(r["accepted"] for r in rows)
    # Every process's shards, so that a process whose own shards accepted nothing does not fail the phase alone.
    total, accepted = distributed.sum_over_processes([total, accepted])
    return {"clips": total, "accepted": accepted, "acceptance_rate": accepted / max(total, 1), "records": rec_dir}


def run_synthesis(animator: Animator, codec, text_encoder, pcfg: proc.ProceduralConfig,
                  scfg: ml_collections.ConfigDict, out_dir: str, seed: int) -> dict:
    """Writes accepted triplets as latent records under ``out_dir/records``; returns a summary."""

    def make_shard(lo, hi):
        examples, rows = [], []
        for start in range(lo, hi, scfg.batch_size):
            idx = list(range(start, min(start + scfg.batch_size, hi)))
            exs = [proc.make_example("train", scfg.index_offset + i, pcfg) for i in idx]
            synth = animator(np.stack([e["cross_reference"] for e in exs]), np.stack([e["pose_video"] for e in exs]),
                             [e["cross_caption"] for e in exs], jax.random.fold_in(jax.random.key(seed), start))
            for i, e, s in zip(idx, exs, synth):
                sc = score(s, e)
                ok = sc["score"] >= scfg.threshold
                rows.append(dict(sc, clip=i, identity_id=int(e["identity_id"]),
                                 new_identity_id=int(e["cross_identity_id"]), accepted=bool(ok)))
                if ok:
                    lat = {k: codec.encode(v[None].astype(np.float32))[0] for k, v in
                           (("target", e["video"]), ("reference", e["reference"][None]), ("motion", s))}
                    text, tmask = text_encoder(e["caption"])
                    examples.append(dict(lat, motion_valid=np.ones(lat["target"].shape[0], np.float32), text=text,
                                         text_mask=tmask, caption=e["caption"], identity_id=int(e["identity_id"]),
                                         motion_id=int(e["motion_id"])))
        return examples, rows

    return run_shards(out_dir, scfg.num_clips, scfg.shard_size, make_shard)
