"""Render-only mesh simplification (the "lean" render profile): a heavy mesh is drawn from fewer faces over its own
vertices, uploaded into the render context from a copy of the model; the physics model is never changed."""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict

import numpy as np

# Arrays mjr_uploadMesh reads (MuJoCo's render_context.c); two models equal in all of them draw the same meshes.
_UPLOAD_FIELDS = (
    "mesh_vertadr",
    "mesh_vertnum",
    "mesh_faceadr",
    "mesh_facenum",
    "mesh_normaladr",
    "mesh_texcoordadr",
    "mesh_graphadr",
    "mesh_vert",
    "mesh_face",
    "mesh_normal",
    "mesh_facenormal",
    "mesh_texcoord",
    "mesh_facetexcoord",
    "mesh_graph",
)
# Render models kept per process: each holds a full copy of the model (about 256 MiB for a LIBERO scene, 180 of them
# textures); an env serves one task, and every hard reset reloads the same meshes.
_CACHE_SIZE = 1
_CACHE: OrderedDict[tuple, object] = OrderedDict()  # (mesh digest, cell, threshold) -> render model


def _bins(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per point, the signed dominant axis (0-5) of its area-weighted normal: the two sides of a thin wall (a bowl's
    inside and outside) fall in different bins and are never merged into one, which face culling would show as holes."""
    a, b, c = (points[faces[:, i]] for i in range(3))
    n = np.cross(b - a, c - a)  # length: twice the face's area
    acc = np.zeros_like(points)
    for i in range(3):
        np.add.at(acc, faces[:, i], n)
    axis = np.abs(acc).argmax(axis=1)
    return 2 * axis + (acc[np.arange(len(acc)), axis] < 0)


def _first_per_group(group: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per group (0..n-1, each present), the index of its entry of least cost."""
    order = np.lexsort((cost, group))
    return order[np.r_[True, group[order][1:] != group[order][:-1]]]


def simplify_faces(
    vert: np.ndarray, face: np.ndarray, cell: float, corner_key: np.ndarray | None = None, key_tolerance: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertex clustering on a grid of `cell` (model units): each vertex is replaced by its cluster's representative,
    an existing vertex (the one nearest the cluster's mean); faces that collapse or repeat are dropped.

    Each corner of a kept face takes its normal and texture coordinate from a source corner: one of the original
    corners at its representative's position whose `corner_key` (per original corner, (nf, 3, d): texture
    coordinates, or normals) is nearest the corner's own, so that position, texture and shading agree; where none is
    within `key_tolerance` (the representative lies across a texture seam) the corner's own, so that no face spans a
    seam it did not span before. Without `corner_key`, the corner's own.

    Returns (kept, faces, source): the original faces kept, in their order; their corners' new vertex indices; and
    per corner its source corner, as an index into the original faces' corners (3 * face + corner)."""
    if not cell > 0:
        raise ValueError(f"mesh cell size must be positive, got {cell!r}.")
    vert = np.asarray(vert, dtype=np.float64).reshape(-1, 3)
    face = np.asarray(face, dtype=np.int64).reshape(-1, 3)
    if len(face) and (face.min() < 0 or face.max() >= len(vert)):
        raise ValueError(f"face indices must lie in [0, {len(vert)}), got [{face.min()}, {face.max()}].")
    # Coincident vertices (meshes stored as triangle soups repeat each corner) are one point, so that every copy of
    # a point moves to the same representative and no crack opens between faces that met there.
    points, first, weld = np.unique(vert, axis=0, return_index=True, return_inverse=True)
    weld = weld.reshape(-1)
    pface = weld[face]
    grid = np.floor((points - points.min(axis=0)) / cell).astype(np.int64)
    keys = np.column_stack([grid, _bins(points, pface)])
    _, cluster = np.unique(keys, axis=0, return_inverse=True)
    cluster = cluster.reshape(-1)
    count = np.bincount(cluster).astype(np.float64)
    mean = np.column_stack([np.bincount(cluster, points[:, i]) for i in range(3)]) / count[:, None]
    head = _first_per_group(cluster, ((points - mean[cluster]) ** 2).sum(axis=1))
    rep_point = head[cluster]  # per point: the point representing its cluster
    new = rep_point[pface]
    ok = (new[:, 0] != new[:, 1]) & (new[:, 1] != new[:, 2]) & (new[:, 0] != new[:, 2])
    idx = np.flatnonzero(ok)
    tri = new[idx]
    # A face repeated in the same winding draws nothing new; the reversed one is the other side of a sheet, kept.
    roll = tri.argmin(axis=1)
    canon = np.stack([tri[np.arange(len(tri)), (roll + i) % 3] for i in range(3)], axis=1)
    _, once = np.unique(canon, axis=0, return_index=True)
    kept = idx[np.sort(once)]
    own = (3 * kept[:, None] + np.arange(3)).reshape(-1)
    source = own.copy()
    if corner_key is not None and len(kept):
        ck = np.asarray(corner_key, dtype=np.float64).reshape(3 * len(face), -1)
        # The original corners at each point, then every (kept corner, corner at its representative) pair.
        cp = pface.reshape(-1)
        by_point = np.argsort(cp, kind="stable")
        start = np.r_[0, np.cumsum(np.bincount(cp, minlength=len(points)))]
        target = new[kept].reshape(-1)
        n = start[target + 1] - start[target]
        pair = np.repeat(np.arange(len(target)), n)
        offset = np.arange(len(pair)) - np.repeat(np.cumsum(n) - n, n)
        cand = by_point[start[target][pair] + offset]
        cost = ((ck[cand] - ck[own[pair]]) ** 2).sum(axis=1)
        best = _first_per_group(pair, cost)
        near = cost[best] <= key_tolerance**2
        source[near] = cand[best][near]
    return kept, first[new[kept]].astype(np.int32), source.reshape(-1, 3)


def _uv_per_length(vert: np.ndarray, face: np.ndarray, uv: np.ndarray) -> float:
    """How far texture coordinates move per unit of length along the mesh's face edges: the 95th percentile, a
    texture stretched more one way than the other (a tube's length and girth) being judged by its most stretched way."""
    dx = np.linalg.norm(vert[face] - vert[np.roll(face, 1, axis=1)], axis=2).reshape(-1)
    du = np.linalg.norm(uv - np.roll(uv, 1, axis=1), axis=2).reshape(-1)
    ok = dx > 0
    return float(np.percentile(du[ok] / dx[ok], 95)) if ok.any() else 0.0


def _digest(model) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in _UPLOAD_FIELDS:
        h.update(np.ascontiguousarray(getattr(model, name)).tobytes())
    return h.hexdigest()


def render_model(model, cell_mm: float, min_vertices: int):
    """A copy of `model` whose meshes of more than `min_vertices` vertices keep only `simplify_faces`' faces (cell
    in millimetres; the model is in metres), built once per mesh content and kept; `model` itself is not changed."""
    if not cell_mm > 0:
        raise ValueError(f"mesh_cell_mm must be positive, got {cell_mm!r}.")
    if min_vertices < 3:
        raise ValueError(f"mesh_min_vertices must be at least 3, got {min_vertices!r}.")
    key = (_digest(model), float(cell_mm), int(min_vertices))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    out = copy.copy(model)  # mj_copyModel: its own arrays
    cell = cell_mm / 1000.0
    for m in np.flatnonzero(np.asarray(model.mesh_vertnum) > min_vertices):
        v0, nv = int(model.mesh_vertadr[m]), int(model.mesh_vertnum[m])
        f0, nf = int(model.mesh_faceadr[m]), int(model.mesh_facenum[m])
        vert, face = model.mesh_vert[v0 : v0 + nv], model.mesh_face[f0 : f0 + nf]
        if model.mesh_texcoordadr[m] >= 0:
            uv = model.mesh_texcoord[model.mesh_texcoordadr[m] + model.mesh_facetexcoord[f0 : f0 + nf]]
            # A representative is at most about a cell from the corner it replaces; a texture coordinate much
            # farther off than that belongs to the other side of a seam.
            tolerance = 2.0 * cell * _uv_per_length(vert, face, uv)
            kept, faces, source = simplify_faces(vert, face, cell, uv, tolerance)
        else:
            normal = model.mesh_normal[model.mesh_normaladr[m] + model.mesh_facenormal[f0 : f0 + nf]]
            kept, faces, source = simplify_faces(vert, face, cell, normal, np.inf)
        # Kept faces move to the front of the mesh's block; mjr_uploadMesh draws only the first mesh_facenum.
        k = len(kept)
        out.mesh_face[f0 : f0 + k] = faces
        out.mesh_facenormal[f0 : f0 + k] = model.mesh_facenormal[f0 : f0 + nf].reshape(-1)[source]
        out.mesh_facetexcoord[f0 : f0 + k] = model.mesh_facetexcoord[f0 : f0 + nf].reshape(-1)[source]
        out.mesh_facenum[m] = k
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out


def upload_meshes(model, con, changed_from=None) -> int:
    """Upload `model`'s meshes into the render context `con` (its GL context current), only those whose face count
    differs from `changed_from`'s where given; returns the number of faces the context's meshes now hold."""
    import mujoco

    for m in range(model.nmesh):
        if changed_from is None or model.mesh_facenum[m] != changed_from.mesh_facenum[m]:
            mujoco.mjr_uploadMesh(model, con, m)
    return int(np.asarray(model.mesh_facenum).sum())
