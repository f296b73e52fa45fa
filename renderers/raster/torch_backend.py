"""Differentiable triangle rasterizer in plain PyTorch, for CPUs (same contract as nvdiffrast).

Visibility is found without gradients: every triangle is expanded into the pixels of its
bounding box (vectorised, in chunks), inside-tested with edge functions and z-buffered with
``scatter_reduce``. Barycentrics of the winning triangle are then recomputed from its clip-space
vertices, so gradients reach vertex positions and attributes; ``antialias`` adds gradients at
silhouettes by blending across edges where they cross between pixel centres.

Triangles are not clipped: one with a vertex behind the camera or in front of the near plane
(NDC z < -1) is dropped whole, where nvdiffrast would clip it. Cameras that keep the object in
front of the near plane, as every magic3d camera does, see no difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

# (triangle, pixel) candidate pairs handled at once; bounds peak memory to a few hundred MB.
PAIRS_PER_CHUNK = 2_000_000
EPS = 1e-8


def to_screen(clip: Float[Tensor, "V 4"], height: int, width: int) -> Float[Tensor, "V 3"]:
    """Pixel x, pixel y (row 0 at NDC y = -1, as nvdiffrast) and NDC depth z/w."""
    w = clip[:, 3:4]
    w = torch.where(w.abs() < EPS, torch.full_like(w, EPS), w)
    ndc = clip[:, :3] / w
    x = (ndc[:, 0] + 1.0) * 0.5 * width
    y = (ndc[:, 1] + 1.0) * 0.5 * height
    return torch.stack([x, y, ndc[:, 2]], dim=-1)


def _visible_faces(
    clip: Float[Tensor, "B V 4"], faces: Int[Tensor, "F 3"], height: int, width: int, cull_back: bool = False
) -> Int[Tensor, "B H W"]:
    """Index of the nearest covering triangle per pixel of every image, -1 where empty (no gradients);
    with ``cull_back``, triangles wound counter-clockwise in NDC (positive screen area: facing away
    under ``Cameras.mvp()``'s flipped Y, see ``renderers.raster``) are left out before any pixel is tested.

    All images are done at once: image b's copy of face f is candidate b * F + f and its pixels
    are b * H * W onwards, so a batch costs one pass over its (triangle, pixel) pairs, not one per image.
    """
    device = clip.device
    batch, n_faces = clip.shape[0], faces.shape[0]
    screen = to_screen(clip.reshape(-1, 4), height, width).view(batch, -1, 3)
    tri = screen[:, faces].reshape(-1, 3, 3)  # B*F 3 3
    w = clip[:, :, 3][:, faces].reshape(-1, 3)
    ok = (w > EPS).all(dim=1)
    ok &= (tri[..., 2] >= -1.0).all(dim=1) & (tri[..., 2] <= 1.0).any(dim=1)
    x0 = torch.ceil(tri[..., 0].min(1).values - 0.5).clamp(0, width - 1).long()
    x1 = torch.floor(tri[..., 0].max(1).values - 0.5).clamp(-1, width - 1).long()
    y0 = torch.ceil(tri[..., 1].min(1).values - 0.5).clamp(0, height - 1).long()
    y1 = torch.floor(tri[..., 1].max(1).values - 0.5).clamp(-1, height - 1).long()
    nx = (x1 - x0 + 1).clamp(min=0)
    ny = (y1 - y0 + 1).clamp(min=0)
    plane, area = _pixel_planes(tri, x0, y0)
    plane = plane.reshape(-1, 12)
    ok &= area <= -EPS if cull_back else area.abs() >= EPS
    count = torch.where(ok, nx * ny, torch.zeros_like(nx))
    ids = torch.nonzero(count > 0).squeeze(1)
    # Pixel index of each candidate's box corner, its image's offset included.
    corner = (ids // n_faces) * (height * width) + y0[ids] * width + x0[ids]

    depth = torch.full((batch * height * width,), float("inf"), device=device, dtype=clip.dtype)
    winner = torch.full((batch * height * width,), -1, dtype=torch.long, device=device)
    if ids.numel() == 0:
        return winner.view(batch, height, width)
    n_all, nx_ids = count[ids], nx[ids]
    cum = torch.cumsum(n_all, 0)
    start = 0
    while start < ids.numel():
        base = cum[start - 1] if start > 0 else torch.tensor(0, device=device)
        end = int(torch.searchsorted(cum, base + PAIRS_PER_CHUNK, right=True).clamp(min=start + 1))
        n = n_all[start:end]
        local = torch.repeat_interleave(torch.arange(end - start, device=device), n)  # candidate within chunk
        offset = torch.arange(int(n.sum()), device=device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        row_len = nx_ids[start:end].index_select(0, local)
        dy = torch.div(offset, row_len, rounding_mode="floor")
        dx = offset - dy * row_len
        face = ids[start:end].index_select(0, local)
        p = plane.index_select(0, face).view(-1, 4, 3)
        vals = p[..., 0] * dx.unsqueeze(-1).to(p.dtype) + p[..., 1] * dy.unsqueeze(-1).to(p.dtype) + p[..., 2]
        z = vals[:, 3]
        inside = (vals[:, :3] >= 0).all(-1) & (z >= -1.0) & (z <= 1.0)
        pix = (corner[start:end].index_select(0, local) + dy * width + dx)[inside]
        z, face = z[inside], face[inside]
        before = depth.clone()
        depth.scatter_reduce_(0, pix, z, reduce="amin")
        front = z <= depth[pix]
        best = torch.full_like(winner, torch.iinfo(torch.long).max)
        best.scatter_reduce_(0, pix[front], face[front], reduce="amin")
        # A later chunk's strictly nearer triangle replaces an earlier winner; on an exact depth
        # tie the earlier (lower) triangle id stays, as if all pairs had been in one chunk.
        take = (best != torch.iinfo(torch.long).max) & ((depth < before) | (winner < 0))
        winner = torch.where(take, best, winner)
        start = end
    return torch.where(winner >= 0, winner % n_faces, winner).view(batch, height, width)


def _pixel_planes(
    tri: Float[Tensor, "F 3 3"], x0: Int[Tensor, " F"], y0: Int[Tensor, " F"]
) -> tuple[Float[Tensor, "F 4 3"], Float[Tensor, " F"]]:
    """Barycentrics w0, w1, w2 and depth of each face as planes over its pixel box.

    Row k is (change per pixel in x, change per pixel in y, value at the centre of pixel (x0, y0)),
    so a candidate pixel costs three multiply-adds per quantity with small integer offsets, which
    also keeps float32 exact enough at 512+ pixels. Also returns the signed screen area.
    """
    ax, ay, az = tri[:, 0].unbind(-1)
    bx, by, bz = tri[:, 1].unbind(-1)
    cx, cy, cz = tri[:, 2].unbind(-1)
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    safe = torch.where(area.abs() < EPS, torch.full_like(area, EPS), area)
    ox, oy = x0.to(tri.dtype) + 0.5, y0.to(tri.dtype) + 0.5
    w0 = torch.stack([by - cy, cx - bx, (bx - ox) * (cy - oy) - (by - oy) * (cx - ox)], -1) / safe.unsqueeze(-1)
    w1 = torch.stack([cy - ay, ax - cx, (cx - ox) * (ay - oy) - (cy - oy) * (ax - ox)], -1) / safe.unsqueeze(-1)
    w2 = -(w0 + w1)
    w2[:, 2] += 1.0
    z = w0 * az.unsqueeze(-1) + w1 * bz.unsqueeze(-1) + w2 * cz.unsqueeze(-1)
    return torch.stack([w0, w1, w2, z], dim=1), area


def _screen_barycentrics(
    tri: Float[Tensor, "N 3 3"], px: Float[Tensor, " N"], py: Float[Tensor, " N"]
) -> tuple[Float[Tensor, "N 3"], torch.Tensor]:
    """Linear (screen-space) barycentrics of points in triangles, and whether they are inside."""
    ax, ay = tri[:, 0, 0], tri[:, 0, 1]
    bx, by = tri[:, 1, 0], tri[:, 1, 1]
    cx, cy = tri[:, 2, 0], tri[:, 2, 1]
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    safe = torch.where(area.abs() < EPS, torch.full_like(area, EPS), area)
    w0 = ((bx - px) * (cy - py) - (by - py) * (cx - px)) / safe
    w1 = ((cx - px) * (ay - py) - (cy - py) * (ax - px)) / safe
    w2 = 1.0 - w0 - w1
    b = torch.stack([w0, w1, w2], dim=-1)
    inside = (area.abs() >= EPS) & (b >= 0).all(-1)
    return b, inside


def _perspective(b: Float[Tensor, "N 3"], w: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    q = b / w
    return q / q.sum(-1, keepdim=True).clamp(min=EPS)


class TorchRasterizer:
    """The CPU backend. Works on any device torch supports, but is meant for CPUs."""

    name = "torch"

    def rasterize(
        self, clip_pos: Float[Tensor, "B V 4"], faces: Int[Tensor, "F 3"], resolution: tuple[int, int],
        cull_back: bool = False,
    ) -> Float[Tensor, "B H W 4"]:
        height, width = resolution
        faces = faces.long()
        batch = clip_pos.shape[0]
        ys, xs = torch.meshgrid(
            torch.arange(height, device=clip_pos.device, dtype=clip_pos.dtype) + 0.5,
            torch.arange(width, device=clip_pos.device, dtype=clip_pos.dtype) + 0.5,
            indexing="ij",
        )
        with torch.no_grad():
            winner = _visible_faces(clip_pos.detach(), faces, height, width, cull_back)
        hit = winner >= 0
        face = winner[hit]
        image = torch.arange(batch, device=clip_pos.device).view(batch, 1, 1).expand_as(winner)[hit]
        corners = faces[face]  # N 3
        screen = to_screen(clip_pos.reshape(-1, 4), height, width).view(batch, -1, 3)
        tri = screen[image[:, None], corners]  # N 3 3
        b, _ = _screen_barycentrics(tri, xs.expand_as(winner)[hit], ys.expand_as(winner)[hit])
        z = (b * tri[..., 2]).sum(-1)
        b = _perspective(b, clip_pos[:, :, 3][image[:, None], corners])
        rast = torch.zeros(batch, height, width, 4, device=clip_pos.device, dtype=clip_pos.dtype)
        values = torch.stack([b[:, 0], b[:, 1], z, (face + 1).to(clip_pos.dtype)], dim=-1)
        return rast.index_put((hit,), values)

    def interpolate(
        self, attr: Float[Tensor, "B V C"] | Float[Tensor, "V C"], rast: Float[Tensor, "B H W 4"],
        faces: Int[Tensor, "F 3"],
    ) -> Float[Tensor, "B H W C"]:
        return interpolate(attr, rast, faces)

    def texture(
        self, tex: Float[Tensor, "B Ht Wt C"], uv: Float[Tensor, "B H W 2"], filter: str = "linear"
    ) -> Float[Tensor, "B H W C"]:
        return texture(tex, uv, filter)

    def antialias(
        self, color: Float[Tensor, "B H W C"], rast: Float[Tensor, "B H W 4"],
        clip_pos: Float[Tensor, "B V 4"], faces: Int[Tensor, "F 3"],
    ) -> Float[Tensor, "B H W C"]:
        return antialias(color, rast, clip_pos, faces)


def interpolate(
    attr: Float[Tensor, "B V C"] | Float[Tensor, "V C"], rast: Float[Tensor, "B H W 4"], faces: Int[Tensor, "F 3"]
) -> Float[Tensor, "B H W C"]:
    """Barycentric interpolation of per-vertex attributes; zero where no triangle covers a pixel."""
    batch = rast.shape[0]
    if attr.dim() == 2:
        attr = attr.unsqueeze(0)
    tri_id = rast[..., 3].long() - 1
    hit = (tri_id >= 0).unsqueeze(-1)
    corner = faces.long()[tri_id.clamp(min=0)]  # B H W 3
    if attr.shape[0] == 1 or attr.stride(0) == 0:  # one set of attributes for every image
        values = attr[0][corner]  # B H W 3 C
    else:
        # Image b's vertices are rows b * V onwards of the flattened attributes: one plain gather.
        rows = corner + (torch.arange(batch, device=rast.device) * attr.shape[1]).view(batch, 1, 1, 1)
        values = attr.reshape(-1, attr.shape[-1])[rows]
    u, v = rast[..., 0:1], rast[..., 1:2]
    out = u * values[..., 0, :] + v * values[..., 1, :] + (1.0 - u - v) * values[..., 2, :]
    return out * hit


def texture(
    tex: Float[Tensor, "B Ht Wt C"], uv: Float[Tensor, "B H W 2"], filter: str = "linear"
) -> Float[Tensor, "B H W C"]:
    """Sample ``tex`` at ``uv`` in [0, 1]; v = 0 is the bottom row (row 0 of ``tex`` is the top)."""
    mode = {"linear": "bilinear", "nearest": "nearest"}.get(filter)
    if mode is None:
        raise ValueError(f"unknown texture filter {filter!r}; use 'linear' or 'nearest'")
    if tex.shape[0] != uv.shape[0]:
        tex = tex.expand(uv.shape[0], -1, -1, -1)
    grid = torch.stack([uv[..., 0] * 2.0 - 1.0, 1.0 - uv[..., 1] * 2.0], dim=-1)
    out = F.grid_sample(tex.permute(0, 3, 1, 2), grid, mode=mode, padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def antialias(
    color: Float[Tensor, "B H W C"], rast: Float[Tensor, "B H W 4"], clip_pos: Float[Tensor, "B V 4"],
    faces: Int[Tensor, "F 3"],
) -> Float[Tensor, "B H W C"]:
    """Blend neighbouring pixels across silhouette edges by where the edge crosses between them.

    For each horizontal and vertical pair of pixels covered by different triangles (or one by
    none), the nearer triangle's silhouette edge that separates the two pixel centres is
    intersected with the segment joining them; the crossing point sets how much of each pixel the
    triangle covers. Silhouette edges are mesh boundaries and edges whose two faces turn opposite
    ways on screen, so edges inside a surface leave colours untouched (as nvdiffrast). Each pair's
    blend is weighted by how squarely the edge faces that axis, so a vertical edge is resolved by
    horizontal pairs alone. The crossing is a function of the vertices, which is what gives
    silhouettes their gradients.
    """
    batch, height, width, channels = color.shape
    faces = faces.long()
    n_faces, n_verts = faces.shape[0], clip_pos.shape[1]
    neighbours = edge_neighbours(faces)
    # The images stacked top to bottom as one tall image of B copies of the mesh (copy b: faces
    # b * F onwards, its screen moved down b * H rows), so one pass blends every image; pixel
    # pairs across two images' seam are left out.
    screen = to_screen(clip_pos.reshape(-1, 4), height, width).view(batch, n_verts, 3)
    down = torch.arange(batch, device=color.device, dtype=screen.dtype) * height
    screen = torch.stack([screen[..., 0], screen[..., 1] + down.view(batch, 1), screen[..., 2]], dim=-1)
    image = torch.arange(batch, device=color.device).view(batch, 1, 1)
    all_faces = (faces.unsqueeze(0) + image * n_verts).reshape(-1, 3)
    all_neighbours = torch.where(neighbours >= 0, neighbours.unsqueeze(0) + image * n_faces, -1).reshape(-1, 3)
    tri_id = rast[..., 3]
    stacked_id = torch.where(tri_id > 0, tri_id + (image * n_faces).to(tri_id.dtype), tri_id)
    tall = torch.cat([rast[..., :3], stacked_id.unsqueeze(-1)], dim=-1).reshape(batch * height, width, 4)
    flat_color = color.reshape(batch * height, width, channels)
    delta = torch.zeros_like(flat_color)
    for axis in (0, 1):
        delta = delta + _edge_blend(flat_color, tall, screen.reshape(-1, 3), all_faces, all_neighbours, axis,
                                    rows_per_image=height)
    return color + delta.view(batch, height, width, channels)


def edge_neighbours(faces: Int[Tensor, "F 3"]) -> Int[Tensor, "F 3"]:
    """The face across edge (k, k+1) of every face, -1 on open boundaries."""
    faces = faces.long()
    a, b = faces, faces.roll(-1, dims=1)
    nv = int(faces.max()) + 1 if faces.numel() else 1
    key = (torch.minimum(a, b) * nv + torch.maximum(a, b)).reshape(-1)
    order = torch.argsort(key)
    pair = torch.nonzero(key[order][1:] == key[order][:-1]).squeeze(1)
    first, second = order[pair], order[pair + 1]
    out = torch.full_like(key, -1)
    out[first] = second // 3
    out[second] = first // 3
    return out.view(-1, 3)


def _edge_blend(
    color: Float[Tensor, "H W C"], rast: Float[Tensor, "H W 4"], screen: Float[Tensor, "V 3"],
    faces: Int[Tensor, "F 3"], neighbours: Int[Tensor, "F 3"], axis: int, rows_per_image: int = 0,
) -> Float[Tensor, "H W C"]:
    tri_id = rast[..., 3].long() - 1
    depth = rast[..., 2]
    if axis == 1:  # neighbours along x
        a_id, b_id = tri_id[:, :-1], tri_id[:, 1:]
        a_z, b_z = depth[:, :-1], depth[:, 1:]
    else:
        a_id, b_id = tri_id[:-1, :], tri_id[1:, :]
        a_z, b_z = depth[:-1, :], depth[1:, :]
    differ = a_id != b_id
    if axis == 0 and rows_per_image:
        differ[rows_per_image - 1 :: rows_per_image] = False  # the seam between two stacked images
    if not differ.any():
        return torch.zeros_like(color)
    rows, cols = torch.nonzero(differ, as_tuple=True)
    ai, bi = a_id[rows, cols], b_id[rows, cols]
    a_front = (bi < 0) | ((ai >= 0) & (a_z[rows, cols] <= b_z[rows, cols]))
    front = torch.where(a_front, ai, bi)
    pa_y, pa_x = rows.to(color.dtype) + 0.5, cols.to(color.dtype) + 0.5
    pb_y, pb_x = (pa_y + 1, pa_x) if axis == 0 else (pa_y, pa_x + 1)
    p_in_x = torch.where(a_front, pa_x, pb_x)
    p_in_y = torch.where(a_front, pa_y, pb_y)
    p_out_x = torch.where(a_front, pb_x, pa_x)
    p_out_y = torch.where(a_front, pb_y, pa_y)
    tri = screen[faces[front]][..., :2]  # N 3 2
    edges = tri.roll(-1, dims=1) - tri  # edge k runs from corner k to corner k+1
    # Edge functions of the three edges at both centres, signed so the inside is positive.
    e_in = edges[..., 0] * (p_in_y.unsqueeze(-1) - tri[..., 1]) - edges[..., 1] * (p_in_x.unsqueeze(-1) - tri[..., 0])
    e_out = edges[..., 0] * (p_out_y.unsqueeze(-1) - tri[..., 1]) - edges[..., 1] * (p_out_x.unsqueeze(-1) - tri[..., 0])
    sign = torch.where(e_in.detach().sum(-1, keepdim=True) >= 0, 1.0, -1.0)
    e_in, e_out = e_in * sign, e_out * sign
    with torch.no_grad():
        area = _signed_area(screen[:, :2][faces])
        nb = neighbours[front]
        silhouette = (nb < 0) | (torch.sign(area[nb.clamp(min=0)]) != torch.sign(area[front]).unsqueeze(-1))
    crossing = (e_in.detach() > 0) & (e_out.detach() < 0) & silhouette
    denom = e_in - e_out
    t = torch.where(crossing, e_in / torch.where(crossing, denom, torch.ones_like(denom)), torch.full_like(e_in, 2.0))
    t, which = t.min(-1)  # the first edge the segment leaves the triangle through
    valid = t <= 1.0
    t = t.clamp(0.0, 1.0)
    # How squarely the edge faces this axis: its normal's share along the pixel pair.
    d = torch.gather(edges.detach(), 1, which.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1).abs()
    along = d[:, 1] if axis == 1 else d[:, 0]
    weight = (along / (d.sum(-1) + EPS)) * valid
    in_rows = torch.where(a_front, rows, rows + (1 if axis == 0 else 0))
    in_cols = torch.where(a_front, cols, cols + (1 if axis == 1 else 0))
    out_rows = torch.where(a_front, rows + (1 if axis == 0 else 0), rows)
    out_cols = torch.where(a_front, cols + (1 if axis == 1 else 0), cols)
    c_in = color[in_rows, in_cols]
    c_out = color[out_rows, out_cols]
    # Inside pixel loses (0.5 - t) of its footprint when the edge is on its side of the midpoint;
    # the outside pixel gains (t - 0.5) when the triangle reaches past the midpoint.
    lose = ((0.5 - t).clamp(min=0.0) * weight).unsqueeze(-1)
    gain = ((t - 0.5).clamp(min=0.0) * weight).unsqueeze(-1)
    delta = torch.zeros_like(color)
    delta = delta.index_put((in_rows, in_cols), lose * (c_out - c_in), accumulate=True)
    delta = delta.index_put((out_rows, out_cols), gain * (c_in - c_out), accumulate=True)
    return delta


def _signed_area(tri: Float[Tensor, "F 3 2"]) -> Float[Tensor, " F"]:
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    return e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
