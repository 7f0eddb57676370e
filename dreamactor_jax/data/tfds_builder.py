"""The procedural character dataset as a TFDS dataset in ArrayRecord files (no TensorFlow needed).

  builder = prepare("/data/tfds", ProceduralTfdsConfig(name="tiny", frames=9, height=32, width=32))
  source = builder.as_data_source(split="train")      # or tfds.data_source("procedural_characters/tiny",
  ds = grain.MapDataset.source(source).map(...)       #      data_dir="/data/tfds", split="train")

Examples hold the pixel fields of a ``kind="pixels"`` record (``data/records.py``): ``target``,
``reference``, ``motion`` (uint8), ``motion_valid``, ``caption``, ``identity_id``, ``motion_id``, so
``pipeline.ToTraining`` turns them into training batches exactly as it does our own records (TFDS
returns ``caption`` as bytes; ``ToTraining`` accepts both). TFDS stores examples in its own shuffled
order (by hashed key); ``index`` gives back the generator index. Without TensorFlow, statistics are
not computed (``ComputeStatsMode.SKIP``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from dreamactor_jax.data import ingest
from dreamactor_jax.data.procedural import dataset as proc

NAME = "procedural_characters"


@dataclasses.dataclass
class ProceduralTfdsConfig(tfds.core.BuilderConfig):
    """Clip size, generator settings and examples per split (a split with 0 examples is not written).

    Attributes:
      frames, height, width: pixel clip size.
      seed, cross_mode: as in ``ProceduralConfig``.
      pose_augment_prob: applied to the train split only.
      stage: 1 drives with the pose render, 2 with the cross-identity clip.
      train_examples, validation_examples, test_examples: examples per split.
    """

    frames: int = 9
    height: int = 32
    width: int = 32
    seed: int = 0
    cross_mode: str = "shape"
    pose_augment_prob: float = 0.3
    stage: int = 1
    train_examples: int = 64
    validation_examples: int = 8
    test_examples: int = 8

    def procedural(self, split: str) -> proc.ProceduralConfig:
        return proc.ProceduralConfig(frames=self.frames, height=self.height, width=self.width, seed=self.seed,
                                     cross_mode=self.cross_mode,
                                     pose_augment_prob=self.pose_augment_prob if split == "train" else 0.0)

    def examples(self, split: str) -> int:
        return {"train": self.train_examples, "validation": self.validation_examples,
                "test": self.test_examples}[split]


class ProceduralCharacters(tfds.core.GeneratorBasedBuilder):
    """Procedural character clips (``data/procedural``) as pixel records, generated locally."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Pixel record fields of records.SCHEMA_VERSION 1."}
    BUILDER_CONFIGS = [ProceduralTfdsConfig(name="tiny", description="9 frames of 32 x 32, 64/8/8 examples")]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup for a builder inside a package needs `importlib_resources` (not a dependency
        # of tfds, not installed); this file is the answer it would find.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        video = (c.frames, c.height, c.width, 3)
        # A builder outside TFDS's own package needs DatasetInfo(builder=...), not dataset_info_from_configs.
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__,
            features=tfds.features.FeaturesDict({
                "target": tfds.features.Tensor(shape=video, dtype=np.uint8),
                "reference": tfds.features.Tensor(shape=(1, *video[1:]), dtype=np.uint8),
                "motion": tfds.features.Tensor(shape=video, dtype=np.uint8),
                "motion_valid": tfds.features.Tensor(shape=(c.frames,), dtype=np.float32),
                "caption": tfds.features.Text(),
                "identity_id": tfds.features.Scalar(dtype=np.int64),
                "motion_id": tfds.features.Scalar(dtype=np.int64),
                "index": tfds.features.Scalar(dtype=np.int64),
            }))

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated locally
        return {s: self._generate_examples(s) for s in proc.SPLITS if self.builder_config.examples(s) > 0}

    def _generate_examples(self, split: str):
        c = self.builder_config
        cfg = c.procedural(split)
        for i in range(c.examples(split)):
            r = ingest.procedural_record(proc.make_example(split, i, cfg), stage=c.stage)
            del r["kind"]
            yield i, dict(r, index=i)


def prepare(data_dir: str, config: ProceduralTfdsConfig | str = "tiny") -> ProceduralCharacters:
    """Generates the dataset under ``data_dir`` (no-op when already there) and returns the builder."""
    builder = ProceduralCharacters(config=config, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return builder


def data_source(data_dir: str, config_name: str = "tiny", split: str = "train"):
    """A grain-readable random-access source of a prepared config (``tfds.data_source``)."""
    return tfds.data_source(f"{NAME}/{config_name}", data_dir=data_dir, split=split)
