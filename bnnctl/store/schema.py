"""The manifest's columns: one table, from which the Arrow schema of the manifest's Delta
table and the JSON Schema in ``schemas/manifest.schema.json`` are both derived.

Every row carries every column (null where a column does not apply to its kind).
Regenerate the JSON file with ``python -m bnnctl.store.schema``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pyarrow as pa

S, I, F, B, T = "string", "int64", "float64", "bool", "timestamp"  # noqa: E741
ARROW = {
    S: pa.string(),
    I: pa.int64(),
    F: pa.float64(),
    B: pa.bool_(),
    T: pa.timestamp("us", tz="UTC"),
}
KINDS = ("train", "sample", "canonical", "import")
#: Columns added after format 2 was set: a table written before one was added lacks it,
#: read as null (and gains it at its next commit). Any other missing column is damage.
ADDED_COLUMNS = ("source", "device")

# name, type, required (non-null for every row), description
COLUMNS: list[tuple[str, str, bool, str]] = [
    ("model_id", S, True, "Unique id of the checkpoint in this store."),
    ("kind", S, True, "train | sample | canonical | import."),
    (
        "method",
        S,
        True,
        "How the row was made: the optimizer (adam, sgd), the sampler, or the canonicalisation.",
    ),
    ("population", S, True, "Name of the population: rows made with one configuration."),
    ("seed", I, False, "Seed of the model (train) or chain (sample); null for imports."),
    ("dataset", S, True, "Name of the dataset the population was trained/evaluated on."),
    ("task", S, True, "classification | regression."),
    (
        "data",
        S,
        False,
        "Path of the group inside the store that holds x_train, y_train, x_test, y_test.",
    ),
    ("data_sha256", S, True, "Content hash of the dataset's four arrays."),
    ("arch", S, True, "Architecture spec as JSON (kind, widths, activation, dropout)."),
    ("arch_name", S, True, "Short architecture name, e.g. mlp:64-128-128-10."),
    ("activation", S, True, "Hidden activation."),
    ("n_params", I, True, "Number of parameters (the params array's second dimension)."),
    ("array", S, True, "Path of the Zarr params array inside the store."),
    ("row", I, True, "Row of this checkpoint in that array."),
    ("dtype", S, True, "Stored dtype of the params array (float32 | float16)."),
    ("sha256", S, True, "sha256 of the row's stored little-endian bytes."),
    ("parent_id", S, False, "model_id this row was derived from; null for roots."),
    (
        "source",
        S,
        False,
        "File an import row was read from: its name in the imported folder, or "
        "ARCHIVE:MEMBER for an archive's member; null for other kinds. (A column added "
        "after format 2 was set: a manifest written before it lacks the column, read as null.)",
    ),
    (
        "config_sha256",
        S,
        True,
        "Hash of the population's configuration (what seeds are derived from).",
    ),
    # training configuration
    ("optimizer", S, False, "adam | sgd."),
    ("lr", F, False, "Peak learning rate."),
    ("momentum", F, False, "SGD momentum."),
    ("nesterov", B, False, "SGD Nesterov momentum."),
    (
        "weight_decay",
        F,
        False,
        "Coupled L2 weight decay as in torch.optim (on the mean loss: prior precision N*wd).",
    ),
    ("epochs", I, False, "Training epochs."),
    ("batch_size", I, False, "Minibatch size."),
    (
        "schedule",
        S,
        False,
        "Learning-rate schedule: constant | cosine | step, or step@MILESTONESxGAMMA "
        "(e.g. step@15,30x0.5).",
    ),
    (
        "device",
        S,
        False,
        "Where the row's arithmetic ran (training, sampling, the canonical check, the "
        "import's evaluation): cpu, or cuda:N with the GPU's name. Rows computed on "
        "different devices may differ in the last bits.",
    ),
    ("wall_time_s", F, False, "Wall time of the block this row was made in, divided by its rows."),
    # metrics (final weights as stored)
    ("train_loss", F, False, "Mean training objective over the last epoch."),
    ("train_acc", F, False, "Training accuracy."),
    ("train_nll", F, False, "Training mean negative log-likelihood."),
    ("train_ece", F, False, "Training expected calibration error (15 bins)."),
    ("train_brier", F, False, "Training Brier score."),
    ("train_rmse", F, False, "Training RMSE (regression)."),
    ("test_acc", F, False, "Test accuracy."),
    ("test_nll", F, False, "Test mean negative log-likelihood."),
    ("test_ece", F, False, "Test expected calibration error (15 bins)."),
    ("test_brier", F, False, "Test Brier score."),
    ("test_rmse", F, False, "Test RMSE (regression)."),
    # sampling
    ("chain", I, False, "Chain index (sample)."),
    ("step", I, False, "Sampler step at which the sample was kept (after burn-in)."),
    ("sample_index", I, False, "Index of the kept sample within its chain."),
    ("burn_in", I, False, "Burn-in steps excluded before the first kept sample."),
    ("accept_rate", F, False, "Metropolis acceptance rate of the chain so far (HMC)."),
    ("step_size", F, False, "Sampler step size (learning rate) at this sample."),
    ("temperature", F, False, "Posterior temperature."),
    ("prior_var", F, False, "Variance of the isotropic Gaussian prior."),
    ("noise_std", F, False, "Gaussian likelihood noise std (regression)."),
    # canonicalisation
    (
        "transform",
        S,
        False,
        "JSON description of the transform that made this row from its parent.",
    ),
    ("max_logit_diff", F, False, "Max |logit difference| from the parent on the test data."),
    ("l2_mass_before", F, False, "L2 mass of the parent's weights."),
    ("l2_mass_after", F, False, "L2 mass after the transform."),
    # provenance
    ("bnnctl_version", S, True, "bnnctl version that wrote the row."),
    ("torch_version", S, True, "torch version that wrote the row."),
    ("created_at", T, True, "When the row was committed (UTC)."),
]

NAMES = [c[0] for c in COLUMNS]
ARROW_SCHEMA = pa.schema([pa.field(n, ARROW[t], nullable=not req) for n, t, req, _ in COLUMNS])
#: The columns a ``--where`` term may be pushed down to the table reader on, by kind
#: (:func:`bnnctl.store.where.pushdown`).
SQL_KINDS = {n: {S: "string", I: "int", F: "float"}[t] for n, t, _, _ in COLUMNS if t in (S, I, F)}


def json_schema() -> dict:
    """JSON Schema of one manifest row (as ``DataFrame.to_dict('records')`` gives it,
    timestamps as ISO 8601 strings)."""
    props: dict[str, dict[str, Any]] = {}
    for name, typ, req, desc in COLUMNS:
        base = {
            S: {"type": "string"},
            I: {"type": "integer"},
            F: {"type": "number"},
            B: {"type": "boolean"},
            T: {"type": "string", "format": "date-time"},
        }[typ]
        props[name] = (
            {**base, "description": desc}
            if req
            else {"anyOf": [base, {"type": "null"}], "description": desc}
        )
    props["kind"] = {"enum": list(KINDS), "description": props["kind"]["description"]}
    props["sha256"]["pattern"] = props["data_sha256"]["pattern"] = SHA_PATTERN
    props["row"]["minimum"] = props["n_params"]["minimum"] = 0
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "bnnctl manifest row",
        "type": "object",
        "required": [n for n, _, req, _ in COLUMNS if req],
        "properties": props,
    }


#: The value constraints of :func:`json_schema` beyond types and required columns.
SHA_PATTERN = "^[0-9a-f]{64}$"


def rows_to_validate(table: pa.Table) -> pa.ChunkedArray | pa.Array:
    """A boolean mask of the rows that can fail :func:`json_schema`, computed column by
    column: a required value missing, an unknown ``kind``, a malformed hash, a negative
    ``row`` or ``n_params``. Types cannot fail once the table has the manifest's Arrow
    schema, so a row outside the mask passes, and validating only the masked rows one
    by one gives the same problems as validating every row (tested)."""
    import pyarrow.compute as pc

    def bad(cond: Any) -> Any:
        return pc.fill_null(cond, True)

    mask = pa.array([False] * table.num_rows)
    for name, _, required, _ in COLUMNS:
        if required:
            mask = pc.or_(mask, pc.is_null(table[name]))
    mask = pc.or_(mask, bad(pc.invert(pc.is_in(table["kind"], pa.array(KINDS)))))
    for name in ("sha256", "data_sha256"):
        mask = pc.or_(mask, bad(pc.invert(pc.match_substring_regex(table[name], SHA_PATTERN))))
    for name in ("row", "n_params"):
        mask = pc.or_(mask, bad(pc.less(table[name], 0)))
    return mask


def arch_json_schema() -> dict:
    """The ``arch`` column's JSON: an MLP (kind ``mlp``) or a conv net (kind ``cnn``)."""
    from bnnctl.arch.conv import cnn_json_schema

    cnn = cnn_json_schema()
    del cnn["$schema"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "bnnctl architecture spec",
        "oneOf": [_mlp_json_schema(), cnn],
    }


def _mlp_json_schema() -> dict:
    return {
        "title": "bnnctl MLP spec",
        "type": "object",
        "required": ["kind", "widths", "activation"],
        "properties": {
            "kind": {"enum": ["mlp"]},
            "widths": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1},
                "minItems": 2,
                "description": "Layer widths, input first, output last.",
            },
            "activation": {"enum": ["relu", "leaky_relu", "tanh", "gelu"]},
            "dropout": {
                "type": "number",
                "minimum": 0,
                "exclusiveMaximum": 1,
                "description": "Dropout rate after each hidden activation.",
            },
        },
        "additionalProperties": False,
    }


SCHEMA_FILES = {"manifest.schema.json": json_schema, "arch.schema.json": arch_json_schema}


def render(make) -> str:
    return json.dumps(make(), indent=2) + "\n"


if __name__ == "__main__":  # regenerate schemas/: python -m bnnctl.store.schema schemas
    from pathlib import Path

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")
    for fname, make in SCHEMA_FILES.items():
        (folder / fname).write_text(render(make))
