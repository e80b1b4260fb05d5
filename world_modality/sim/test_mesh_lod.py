"""Render-only mesh simplification on small synthetic meshes: fewer faces over the mesh's own vertices, a closed mesh
stays closed, texture coordinates follow the drawn vertex without spanning a seam, the model itself is untouched;
and the profiles' records (the lean profile's, and the unchanged ones of the older profiles)."""

from collections import Counter

import mujoco
import numpy as np
import pytest

from world_modality.sim.mesh_lod import render_model, simplify_faces
from world_modality.sim.render_profile import check_profile, recorded_profile, render_profile


def _sphere(n_lat: int = 40, n_lon: int = 80, r: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """A closed UV sphere, outward faces, shared vertices."""
    lat, lon = np.linspace(0, np.pi, n_lat + 1)[1:-1], np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    a, b = np.meshgrid(lat, lon, indexing="ij")
    ring = np.stack([np.sin(a) * np.cos(b), np.sin(a) * np.sin(b), np.cos(a)], axis=-1).reshape(-1, 3)
    vert = r * np.vstack([[0, 0, 1], ring, [0, 0, -1]])

    def at(i, j):
        return 1 + i * n_lon + j % n_lon

    faces = [[0, at(0, j), at(0, j + 1)] for j in range(n_lon)]
    for i in range(n_lat - 2):
        for j in range(n_lon):
            faces += [[at(i, j), at(i + 1, j), at(i + 1, j + 1)], [at(i, j), at(i + 1, j + 1), at(i, j + 1)]]
    faces += [[len(vert) - 1, at(n_lat - 2, j + 1), at(n_lat - 2, j)] for j in range(n_lon)]
    return vert, np.asarray(faces)


def _tube(n_up: int = 30, r: float = 0.05, h: float = 0.1):
    """An open tube as a triangle soup (each face its own three vertices, as LIBERO's textured meshes are stored),
    u around it with its seam at angle 0 (u = 0 on one side, 1 on the other), v along it. Its columns are dense just
    past the seam and sparse before it, so that a cluster across the seam is drawn by a vertex past it."""
    around = np.r_[np.linspace(0, 0.05, 40), np.linspace(0.05, 1, 80)[1:]]
    u, v = np.meshgrid(around, np.arange(n_up + 1) / n_up, indexing="ij")
    n_around = len(around) - 1
    grid_uv = np.stack([u, v], axis=-1)
    turn = 2 * np.pi * (u % 1.0)  # both sides of the seam at exactly one position, as a mesh file stores it
    grid_xyz = np.stack([r * np.cos(turn), r * np.sin(turn), h * v], axis=-1)
    corners = []
    for i in range(n_around):
        for j in range(n_up):
            corners += [[(i, j), (i + 1, j), (i + 1, j + 1)], [(i, j), (i + 1, j + 1), (i, j + 1)]]
    corners = np.asarray(corners)  # (faces, 3, 2): grid cell of each corner
    vert = grid_xyz[corners[..., 0], corners[..., 1]].reshape(-1, 3)
    uv = grid_uv[corners[..., 0], corners[..., 1]].reshape(-1, 2)
    return vert, np.arange(len(vert)).reshape(-1, 3), uv


def _model(vert, face, texcoord=None) -> mujoco.MjModel:
    def flat(a):
        return " ".join(f"{x:.9g}" for x in np.ravel(a))

    tex = f' texcoord="{flat(texcoord)}"' if texcoord is not None else ""
    return mujoco.MjModel.from_xml_string(
        f'<mujoco><asset><mesh name="m" inertia="shell" vertex="{flat(vert)}" face="{flat(face)}"{tex}/></asset>'
        '<worldbody><body><freejoint/><geom type="mesh" mesh="m" mass="1"/></body></worldbody></mujoco>'
    )


def _mesh_arrays(model) -> dict:
    return {f: np.array(getattr(model, f)) for f in dir(model) if f.startswith("mesh_")}


def test_a_closed_mesh_stays_closed_over_its_own_vertices_and_the_model_is_untouched():
    model = _model(*_sphere())
    before = _mesh_arrays(model)
    lean = render_model(model, cell_mm=6.0, min_vertices=100)
    assert all(np.array_equal(getattr(model, f), a) for f, a in before.items())  # the model given is not changed
    assert render_model(model, cell_mm=6.0, min_vertices=100) is lean  # built once per mesh content
    n, full = int(lean.mesh_facenum[0]), int(model.mesh_facenum[0])
    assert full == 6240 and n < full / 2
    faces = lean.mesh_face[:n]
    assert faces.min() >= 0 and faces.max() < model.mesh_vertnum[0]
    assert np.all((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2]))
    edges = Counter((int(a), int(b)) for f in faces for a, b in zip(f, np.roll(f, -1), strict=True))
    # Closed: every edge is crossed as often one way as the other, so no hole opened.
    assert all(edges[(b, a)] == k for (a, b), k in edges.items())
    # A mesh at or under the threshold is drawn as the model has it.
    assert render_model(model, cell_mm=6.0, min_vertices=int(model.mesh_vertnum[0])).mesh_facenum[0] == full


def test_texture_coordinates_follow_the_drawn_vertex_and_never_span_the_seam():
    vert, face, uv = _tube()
    model = _model(vert, face, uv)
    assert model.mesh_vertnum[0] == len(vert) and model.mesh_texcoordnum[0] == len(uv)  # a soup, as LIBERO's
    lean = render_model(model, cell_mm=6.0, min_vertices=100)
    n = int(lean.mesh_facenum[0])
    assert n < model.mesh_facenum[0] / 2
    drawn = vert[lean.mesh_face[:n]]  # (n, 3, 3), in the tube's own frame (MuJoCo keeps the vertex order)
    tex = lean.mesh_texcoord[lean.mesh_texcoordadr[0] + lean.mesh_facetexcoord[:n]]  # (n, 3, 2)
    # No face is stretched across the whole texture (u from about 0 to about 1 at the seam).
    assert np.ptp(tex[..., 0], axis=1).max() < 0.1
    # Each corner's texture coordinate is that of the point it draws (u: the angle around the tube, v: the height),
    # but where that point lies across the seam from the corner it replaces: there the corner's own, a cell off.
    u_off = np.abs(tex[..., 0] - np.arctan2(drawn[..., 1], drawn[..., 0]) / (2 * np.pi) % 1.0)
    off_mm = np.hypot(np.minimum(u_off, 1 - u_off) * 2 * np.pi * 50, (tex[..., 1] - drawn[..., 2] / 0.1) * 100)
    assert (off_mm < 1e-3).mean() > 0.97
    assert off_mm.max() < 2 * 6.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: simplify_faces(np.zeros((3, 3)), [[0, 1, 2]], 0.0), "mesh cell size must be positive, got 0.0"),
        (lambda: simplify_faces(np.zeros((3, 3)), [[0, 1, 3]], 0.004), r"face indices must lie in \[0, 3\)"),
        (lambda: render_model(_model(*_sphere(4, 8)), -1.0, 100), "mesh_cell_mm must be positive, got -1.0"),
        (lambda: render_model(_model(*_sphere(4, 8)), 4.0, 2), "mesh_min_vertices must be at least 3, got 2"),
    ],
)
def test_bad_simplification_settings_are_refused_naming_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_profiles_record_their_settings_and_the_older_records_are_unchanged():
    # Datasets recorded before the lean profile compare equal to these records: no new fields in them.
    assert render_profile("fast").record() == {"name": "fast", "msaa_samples": 0, "shadows": False}
    assert render_profile("libero").record() == {"name": "libero", "msaa_samples": 4, "shadows": True}
    assert render_profile("fast").expected_settings() == {"msaa_samples": 0, "shadows": False, "reflections": False}
    lean = render_profile("lean")
    assert lean.record() == {
        **render_profile("fast").record(),
        "name": "lean",
        "mesh_cell_mm": 6.0,
        "mesh_min_vertices": 8000,
    }
    assert lean.expected_settings() == {
        **render_profile("fast").expected_settings(),
        "mesh_cell_mm": 6.0,
        "mesh_min_vertices": 8000,
    }
    with pytest.raises(ValueError, match=r"'half': mesh_cell_mm \(4.0\) and mesh_min_vertices \(None\) are set"):
        type(lean)("half", 0, False, mesh_cell_mm=4.0)


def test_a_lean_policy_is_evaluated_with_lean_frames_only():
    assert recorded_profile({"render_profile": "lean"}) == "lean"
    assert check_profile(None, "lean", "policy.json") == check_profile("lean", "lean", "policy.json") == "lean"
    with pytest.raises(ValueError, match=r"--render_profile 'fast' differs from 'lean'"):
        check_profile("fast", "lean", "policy.json")
    with pytest.raises(ValueError, match=r"--render_profile 'lean' differs from 'fast'"):
        check_profile("lean", "fast", "policy.json")
