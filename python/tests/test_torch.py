"""PyTorch CPU tensors through DLPack (Debian's python3-torch), bfloat16 included.
Skipped, with the reason, where torch is not installed."""
import numpy as np
from helpers import attn_oracle, bf16_round, pytest

import pagedkv

torch = pytest.importorskip("torch", reason="python3-torch is not installed: the DLPack/torch tests are skipped")


def test_dlpack_is_zero_copy_and_keeps_bf16():
    t = torch.randn(3, 5).to(torch.bfloat16)
    a, is_bf16 = pagedkv._pagedkv._from_dlpack(t)
    assert is_bf16 and a.dtype == np.uint16 and a.shape == (3, 5)
    assert np.array_equal(pagedkv.bf16_to_f32(a), t.float().numpy())
    a[0, 0] = pagedkv.f32_to_bf16(np.float32(2.0))
    assert t[0, 0].item() == 2.0  # the same memory
    with pytest.raises(pagedkv.InvalidError, match="^q: cannot import through DLPack"):
        pagedkv.attention(torch.randn(1, 1, 1, 4, requires_grad=True), torch.zeros(1, 1, 1, 4), None, None, 1.0)


def test_attention_bf16_tensors():
    g = torch.Generator().manual_seed(0)
    nb, bs, h_kv, d, dv, h_q = 6, 16, 1, 576, 512, 8
    k = torch.randn(nb, bs, h_kv, d, generator=g).to(torch.bfloat16)
    q = torch.randn(2, 1, h_q, d, generator=g).to(torch.bfloat16)
    table = torch.tensor([[0, 2, 4, -1], [1, 3, -1, -1]], dtype=torch.int32)
    lens = torch.tensor([40, 20], dtype=torch.int32)
    out, lse = pagedkv.attention(q, k, table, lens, 0.072, dv=dv)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 1, h_q, dv)
    assert isinstance(lse, torch.Tensor) and lse.shape == (2, h_q, 1)
    ref_out, ref_lse = attn_oracle(q.float().numpy(), k.float().numpy(), table.numpy(), lens.numpy(), 0.072, dv=dv)
    assert np.abs(out.numpy() - ref_out).max() <= 2e-3 * np.abs(ref_out).max()
    assert np.abs(lse.numpy() - ref_lse).max() <= 1e-3
    # the numpy path with dtype="bf16" gives the same bits
    o2, _ = pagedkv.attention(q.view(torch.int16).numpy().view(np.uint16), k.view(torch.int16).numpy().view(np.uint16),
                              table.numpy(), lens.numpy(), 0.072, dv=dv, dtype="bf16")
    assert np.array_equal(o2, out.numpy())
    with pytest.raises(pagedkv.DTypeError, match="^block_table: expected int32"):
        pagedkv.attention(q, k, table.long(), lens, 0.072, dv=dv)


def test_write_read_tensors():
    c = pagedkv.Cache(num_blocks=4, block_size=4, storage="host", h_kv=2, d=8, dv=8, v_separate=True,
                      kv_dtype="bf16")
    s = c.sequence()
    slots = torch.from_numpy(s.append(5))
    k = torch.randn(5, 2, 8).to(torch.bfloat16)
    v = torch.randn(5, 2, 8)
    with pytest.raises(pagedkv.DTypeError, match="^v: dtype f32 differs"):
        c.write(0, slots, k, v)
    c.write(0, slots, k, v.to(torch.bfloat16))
    rk, rv = c.read(0, slots)
    assert isinstance(rk, torch.Tensor) and torch.equal(rk, k.float()) and torch.equal(rv, v.to(torch.bfloat16).float())
    c.write(0, slots, k.float(), v)  # float32, rounded by the library
    assert np.array_equal(c.read(0, slots.numpy())[1], bf16_round(v.numpy()).astype(np.float32))
    with pytest.raises(pagedkv.InvalidError, match="^k: the array is not C-contiguous"):
        c.write(0, slots, torch.randn(5, 2, 16)[:, :, ::2], v)
