"""An ablation spec (YAML, see ``bench.ablate``): the pool of pairs, the filter, the dataset
variants, the training recipe and the harness spec, validated into typed objects."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ip2p.errors import SpecError

MARKER = "ablation_variant.json"
FILTERED_SEEDS = "seeds_filtered.json"  # the filter's kept pairs (the pool's seeds.json lists every pair)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PairsSpec(_Strict):
    model: str = "world:sd"
    prompts: str = "world:triplets"
    limit: int | None = Field(default=None, gt=0)
    n_per_prompt: int = Field(default=8, gt=0)
    steps: int = Field(default=20, gt=0)
    seed: int = 0
    batch_size: int = Field(default=16, gt=0)
    p2p_range: tuple[float, float] = (0.1, 0.9)
    cfg_range: tuple[float, float] = (7.5, 15.0)
    dtype: str = "float32"


class ClipModelSpec(_Strict):
    model: str = "world:clip"
    pretrained: str | None = None


class FilterSpec(_Strict):
    clip: ClipModelSpec = Field(default_factory=ClipModelSpec)
    thresholds: dict[str, float | int | None] = Field(default_factory=dict)  # ClipFilter fields


class VariantSpec(_Strict):
    name: str
    source: Literal["generated", "world"] = "generated"
    size: int = Field(gt=0)
    filter: bool = True  # generated pairs only

    def data_identity(self) -> dict:
        return {"source": self.source, "size": self.size, "filter": self.filter if self.source == "generated" else None}


class GridSpec(_Strict):
    source: list[Literal["generated", "world"]] = Field(default_factory=lambda: ["generated"])
    size: list[int]
    filter: list[bool] = Field(default_factory=lambda: [True, False])


class AblationSpec(_Strict):
    name: str
    description: str = ""
    base: str = "world:ip2p"
    pairs: PairsSpec = Field(default_factory=PairsSpec)
    filter: FilterSpec = Field(default_factory=FilterSpec)
    variants: list[VariantSpec] = Field(default_factory=list)
    grid: GridSpec | None = None
    subset_seed: int = 0
    train: dict[str, Any] = Field(default_factory=dict)
    sweep: str
    include_base: bool = True
    references: dict[str, str] = Field(default_factory=dict)  # label -> model, swept beside the variants
    device: str | None = None

    def all_variants(self) -> list[VariantSpec]:
        out = list(self.variants)
        if self.grid is not None:
            for src in self.grid.source:
                for size in self.grid.size:
                    for flt in (self.grid.filter if src == "generated" else [None]):
                        name = f"{'gen' if src == 'generated' else 'world'}-{size}"
                        if flt is not None:
                            name += "-filtered" if flt else "-unfiltered"
                        out.append(VariantSpec(name=name, source=src, size=size, filter=bool(flt)))
        return out


def load_ablation_spec(path: str | Path) -> tuple[AblationSpec, Path]:
    """The spec and the folder relative paths are read from; SpecError naming the field otherwise."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"ablation spec not found: {p}")
    from ip2p.util.textfiles import load_yaml

    data = load_yaml(p, SpecError, what="ablation spec")
    try:
        spec = AblationSpec.model_validate(data)
    except ValidationError as e:
        from bench.spec import _format_validation_error

        raise SpecError(f"{p}: {_format_validation_error(e)}") from None
    variants = spec.all_variants()
    if not variants:
        raise SpecError(f"{p}: variants: none given (list variants or a grid)")
    seen = set()
    for i, v in enumerate(variants):
        if v.name in seen or v.name == "base" or v.name in spec.references:
            raise SpecError(f"{p}: variants[{i}].name: {v.name!r} is used twice (or is the reserved name 'base', "
                            f"or a label in references)")
        from ip2p.util.paths import UnsafePathError, check_relative_name

        try:  # it names the variant's data and model folders
            if len(check_relative_name(v.name, what=f"variants[{i}].name")) != 1:
                raise UnsafePathError(f"variants[{i}].name {v.name!r}: holds a '/'; it names one folder")
        except UnsafePathError as e:
            raise SpecError(f"{p}: {e}") from None
        seen.add(v.name)
    for label in spec.references:
        if label == "base" and spec.include_base:
            raise SpecError(f"{p}: references.base: 'base' labels the base model's curve (include_base); use another label")
    from ip2p.data.filtering import ClipFilter
    from ip2p.train.config import TrainConfig

    try:
        ClipFilter(**spec.filter.thresholds)
    except TypeError as e:
        raise SpecError(f"{p}: filter.thresholds: {e}; fields: min_image, min_direction, min_sim_0, min_sim_1, "
                        f"max_per_prompt") from None
    fields = set(TrainConfig.__dataclass_fields__) - {"base", "data", "out", "split", "data_options", "subset",
                                                      "clip_filter", "resume"}
    bad = sorted(set(spec.train) - fields)
    if bad:
        raise SpecError(f"{p}: train.{bad[0]}: not a training option here; options: {', '.join(sorted(fields))}")
    return spec, p.parent
