"""Stage ``similar``: similarity of every cell to a query -> ``OUT/similar.zarr``, ``similar.png``, ``similar.json``."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from magpipe.bundle import load_bundle
from magpipe.config import RunConfig
from magpipe.explore import PICK_SPACING_PATCHES, top_blocks
from magpipe.inputs import input_stack
from magpipe.io import schema as S
from magpipe.io.location import absolute, as_path
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, open_store, write_json
from magpipe.locking import locks_output
from magpipe.similarity import query_cells, query_embedding, similarity_tile
from magpipe.tiling import output_template, write_tiles

SIMILARITY = {"similarity": ("float32", float("nan"), {
    "long_name": "cosine similarity of the AE embedding to the query", "units": "1"})}


@locks_output
def run_similar(out: str | Path, cfg: RunConfig, *, point: tuple[float, float] | None = None,
                polygons: str | Path | None = None, bundle: str | Path | None = None, k: int = 10,
                client=None) -> list[dict]:
    """Map the similarity of every cell to the query (a point x, y or polygons, survey CRS).

    Writes ``OUT/similar.zarr`` (``similarity`` (y, x) float32, cosine -1..1, NaN = no data),
    ``similar.png`` and ``similar.json``. ``bundle`` defaults to ``OUT/model``; ``client`` runs the
    tiles as in :func:`magpipe.stages.classify.run_classify`. Raises InputError for a bad query.

    Returns
    -------
    The ``k`` most similar places outside the query, each at least two patch widths from a
    more similar one: rank, x, y, row, col, similarity.
    """
    from magpipe.report import similarity_figure

    lay = Layout(out)
    cfg.save(lay.config)
    survey = open_store(lay.survey)
    bundle_path = as_path(bundle) if bundle else lay.model
    model = load_bundle(bundle_path)
    rows, cols = query_cells(survey, point=point, polygons=polygons)
    arrays, _ = input_stack(lay, model.inputs)
    q = query_embedding(model, arrays, rows, cols)
    tile_px = cfg.classify.chunk_px
    h = content_hash("similar-v1", str(survey.attrs.get(S.HASH)), str(model.meta["input_hash"]),
                     hashlib.sha256(q.tobytes()).hexdigest(), str(tile_px))
    write_tiles(lay.similar, output_template(survey, SIMILARITY, tile_px),
                functools.partial(similarity_tile, absolute(lay.root), model, q), stage_hash=h,
                tile_px=tile_px, client=client, name="similarity", attrs={S.SOURCE: lay.survey.name})
    hits = top_blocks(lay.similar, "similarity", k, block=PICK_SPACING_PATCHES * model.patch_px,
                      exclude=(rows, cols))
    similarity_figure(lay.similar, hits, (rows, cols), lay.figure("similar"))
    write_json({"query": {"point": point, "polygons": str(polygons) if polygons else None, "n_cells": int(rows.size)},
                "top": hits}, lay.similar_json)
    return hits
