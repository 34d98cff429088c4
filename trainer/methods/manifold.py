"""Fine-grained manifold distillation (Jia et al., 2021, Eq. 9-13): relation maps of paired blocks' patch
tokens (the raw residual stream, class/distillation tokens dropped), with the recipe's logit distillation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from trainer import losses
from trainer.methods import (
    BLOCK_ROW_FIELDS,
    FLOAT,
    BlockPairs,
    LossInputs,
    Method,
    block_name_parts,
    block_pair_problems,
    blocks_text,
    register,
    zero_based,
)
from trainer.spec_base import (
    AfterValidator,
    Block,
    Field,
    Strict,
    StrictModel,
    Weight,
    field_validator,
    hashed_as,
    model_validator,
)

Term = Literal["ci", "cp", "rs"]
K = Annotated[int, Strict(), Field(ge=0)]
# How each relation-map gap is reduced (Eq. 10-12): summed as the paper prints it, or averaged over its
# entries as the released code's F.mse_loss does. Specs written before the rename say paper / released;
# runs hash with those tokens, so every run keeps its content hash.
Reduction = Literal["sum", "mean"]
OLD_REDUCTION = {"paper": "sum", "released": "mean"}
LOSS_REDUCTION = losses.SPEC_REDUCTION  # the token trainer.losses and the content hash use


def distinct_terms(terms):
    if terms is not None and len(set(terms)) != len(terms):
        raise ValueError(f"repeated term in {list(terms)}")
    return terms


Terms = Annotated[tuple[Term, ...], AfterValidator(distinct_terms)]


class TermScale(StrictModel):
    """Per-term scale under the released code: w_sample (ci), w_patch (cp), and rs's factor on beta."""

    ci: Weight = 1.0
    cp: Weight = 1.0
    rs: Weight = 1.0


class ManifoldSpec(BlockPairs):
    """Fine-grained manifold loss (Eq. 9): L_ci + alpha L_cp + beta L_rs over block pairs.

    Effective weights are (term_scale.ci, term_scale.cp * alpha, term_scale.rs * beta), times `weight`:
    the paper's recipe has term_scale 1 (Eq. 9); the released code's recipe has term_scale
    (0.1, 4, 1), which gives its w_sample=0.1, w_patch=4, w_rand=0.2 at the paper's alpha=1, beta=0.2,
    and keeps Table 4's rows meaningful as relative changes of alpha and beta.
    """

    terms: Terms = ("ci", "cp", "rs")
    alpha: Weight = 1.0
    beta: Weight = 0.2
    k: int = Field(192, ge=0)
    student_blocks: tuple[Block, ...] = (1, 2, 3, 4, 9, 10, 11, 12)
    teacher_blocks: tuple[Block, ...] = (1, 2, 3, 4, 21, 22, 23, 24)
    reduction: Reduction = Field("sum", json_schema_extra=hashed_as(LOSS_REDUCTION))
    # How Eq. 13 combines the block pairs: "sum" (the paper's text) or "mean" (the released code). Unset
    # follows the reduction, which keeps earlier runs' content hashes.
    layers: Literal["sum", "mean"] | None = None
    term_scale: TermScale = TermScale()
    weight: Weight = 1.0
    exact: bool = False  # add the exact patch-level loss (Eq. 8) computed through Gram matrices
    exact_weight: Weight = 1.0

    @property
    def layer_reduce(self) -> str:
        """How the block pairs' losses combine (Eq. 13): the explicit `layers`, else the reduction's."""
        return self.layers or self.reduction

    @field_validator("reduction", mode="before")
    @classmethod
    def _old_name(cls, reduction: Any) -> Any:
        return OLD_REDUCTION.get(reduction, reduction) if isinstance(reduction, str) else reduction

    @field_validator("terms")
    @classmethod
    def _term_order(cls, terms: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t for t in ("ci", "cp", "rs") if t in terms)  # canonical order

    @model_validator(mode="after")
    def _canonical(self) -> ManifoldSpec:
        if not self.terms and not self.exact:
            raise ValueError("no manifold term selected: list terms (ci, cp, rs) or set exact: true")
        # Settings that cannot change the loss are normalised away, so equal losses hash equally:
        # k=0 means no random-sampled term (Table 6's k=0 row is Table 3's L_ci + L_cp row).
        terms = self.terms
        if self.k == 0 or self.beta == 0:
            terms = tuple(t for t in terms if t != "rs")
        fix: dict[str, Any] = {"terms": terms}
        if "rs" not in terms:
            fix.update(k=0, beta=0.0)
        if "cp" not in terms:
            fix["alpha"] = 0.0
        if not self.exact:
            fix["exact_weight"] = 0.0
        self.__dict__.update(fix)
        return self


@register
class Manifold(Method):
    key = "manifold"
    order = 10
    fields = {"manifold": (ManifoldSpec | None, None)}
    rows = {"manifold": "Manifold"}
    row_fields = {
        "terms": Terms | None,
        "alpha": Weight | None,
        "beta": Weight | None,
        "k": K | None,
        **BLOCK_ROW_FIELDS,
    }
    recipe_fields = {"manifold": (ManifoldSpec, ManifoldSpec())}
    recipe_rows = True
    terms = ("mf_ci", "mf_cp", "mf_rs", "mf_exact")

    def student_taps(self, m):
        return zero_based(m.student_blocks)

    def teacher_taps(self, m):
        return zero_based(m.teacher_blocks)

    def problems(self, m, s, t, spec):
        out = []
        if s.kind == "cnn":
            out.append(("student.name", f"{s.name} is a CNN: it has no patch tokens for a feature loss"))
        out += block_pair_problems(self.key, m, s, t, spec)
        if t.kind != "cnn" and s.kind != "cnn" and s.num_patches and m.k > spec.recipe.batch_size * s.num_patches:
            out.append(
                (
                    "distillation.manifold.k",
                    f"k={m.k} is larger than the batch's {spec.recipe.batch_size} x "
                    f"{s.num_patches} = {spec.recipe.batch_size * s.num_patches} patches",
                )
            )
        return out

    def loss(self, m, x: LossInputs):
        weights = {
            "ci": m.term_scale.ci * m.weight,
            "cp": m.term_scale.cp * m.alpha * m.weight,
            "rs": m.term_scale.rs * m.beta * m.weight,
        }
        mf = losses.manifold_loss(
            x.student,
            x.teacher,
            terms=m.terms,
            weights=weights,
            k=m.k,
            reduction=LOSS_REDUCTION[m.reduction],
            layer_reduce=m.layer_reduce,
            exact_weight=m.exact_weight * m.weight if m.exact else 0.0,
            generator=x.generator,
        )
        total = mf.pop("total")
        return total, {f"mf_{k}": v for k, v in mf.items()}

    def footprint(self, m, s, t, batch: int) -> int:
        if not s.num_patches:
            return 0
        n, p, k = batch, s.num_patches, m.k
        maps = p * n * n + n * p * p + k * k  # ci, cp and rs maps, each kept for student, teacher, gap
        return 3 * FLOAT * maps * len(m.student_blocks)

    def flops(self, m, s, t, spec):
        """The relation maps of every block pair, student and teacher (the teacher's taken as wide as the
        student's): n x n per patch (L_ci), p x p per image (L_cp), k x k sampled (L_rs)."""
        n, p, k = spec.recipe.batch_size, s.num_patches or 0, m.k
        per_batch = 2 * (2 * s.width) * (p * n * n + n * p * p + k * k)
        return len(m.student_blocks) * per_batch / max(1, n)

    def name_parts(self, name, row):
        """The paper's notation for what Tables 3-6 vary: "L_ci+L_cp", "α=0.5 β=0.2", "k=384", blocks."""
        parts = []
        if row.terms is not None:
            parts.append("+".join(f"L_{t}" for t in row.terms))
        if row.alpha is not None or row.beta is not None:
            parts.append(" ".join(f"{sym}={v:g}" for sym, v in (("α", row.alpha), ("β", row.beta)) if v is not None))
        if row.k is not None:
            parts.append(f"k={row.k}")
        return parts + block_name_parts(row)

    def resolve_row(self, name, row, recipe, hard):
        loss = recipe.manifold.model_dump()
        loss.update({f: getattr(row, f) for f in self.row_fields if getattr(row, f, None) is not None})
        return {**recipe.logit.model_dump(), "manifold": loss}

    def describe(self, m):
        parts = [
            f"terms={'+'.join(m.terms)} α={m.alpha:g} β={m.beta:g} k={m.k}",
            f"blocks s{blocks_text(m.student_blocks)} t{blocks_text(m.teacher_blocks)}",
        ]
        if m.reduction != "sum":
            parts.append(f"reduction={m.reduction}")
        if m.layers is not None:
            parts.append(f"layers={m.layers}")
        return parts
