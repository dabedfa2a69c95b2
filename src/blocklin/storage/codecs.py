"""Chunk encoding: zarr v3's ``bytes`` → optional compressor → ``crc32c`` pipeline.

blocklin writes and reads chunks itself, byte-compatible with zarr v3, because the
generic path through zarr's array API decodes at a third of the speed (measured on
2 cores: 1.0 GB/s through ``zarr.Array.__getitem__`` versus 3–4 GB/s reading chunk
bytes into reused buffers and decoding in place). Arrays whose codecs fall outside
this set are still read, through zarr.

Choice of default (``codec="auto"``): a trial compression of the first block with
LZ4 + byte shuffle. Dense floating-point data rarely compresses (ratio 1.05 on
Gaussian data) and uncompressed chunks read fastest (3.4 vs 2.0 GB/s per thread for
LZ4, 1.0 for zstd-1), so compression is kept only when it saves at least 15%.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import crc32c
import numcodecs
import numpy as np

from blocklin.types import CODECS, CodecName, parse_option

__all__ = ["ChunkCodec", "choose_codec", "codec_from_metadata"]

_CRC_BYTES = 4
#: What ``codec=`` accepts: a codec, or ``auto`` (:func:`choose_codec`).
_CHOICES: tuple[CodecName | Literal["auto"], ...] = ("auto", *CODECS)


def _verified_body(raw: memoryview) -> tuple[memoryview, str | None]:
    """A stored chunk's body (what precedes its crc32c trailer), and why the chunk is
    corrupt: None when the trailer matches the body."""
    if len(raw) < _CRC_BYTES:
        return raw, f"chunk holds {len(raw)} bytes, fewer than its checksum"
    body, tail = raw[:-_CRC_BYTES], raw[-_CRC_BYTES:]
    stored = int.from_bytes(tail, "little")
    computed = crc32c.crc32c(body)
    if stored != computed:
        return body, f"crc32c checksum mismatch (stored {stored:08x}, computed {computed:08x})"
    return body, None


@dataclass(frozen=True)
class ChunkCodec:
    """How one array's chunks are encoded.

    Parameters
    ----------
    compressor : {"none", "lz4", "zstd"}
        ``lz4`` is Blosc-LZ4 with byte shuffle; ``zstd`` is plain Zstandard.
    level : int
        Compression level (ignored for ``none``).
    """

    compressor: CodecName = "none"
    level: int = 1

    def _numcodec(self) -> Any:
        if self.compressor == "lz4":
            return numcodecs.Blosc(cname="lz4", clevel=self.level, shuffle=numcodecs.Blosc.SHUFFLE)
        if self.compressor == "zstd":
            return numcodecs.Zstd(level=self.level)
        return None

    def encode(self, chunk: np.ndarray) -> tuple[list[bytes | memoryview], int]:
        """Encode a full-shape, C-ordered chunk; return the stored bytes as parts (the
        body, then the checksum trailer) and their crc32c.

        Parts, not one buffer: an uncompressed body is a view of the chunk itself, and
        joining it to its trailer would copy the whole block into a fresh allocation
        (page faults included) on every write.
        """
        arr = np.ascontiguousarray(chunk)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        codec = self._numcodec()
        body = arr.data.cast("B") if codec is None else codec.encode(arr)
        crc = crc32c.crc32c(body)
        return [body, crc.to_bytes(_CRC_BYTES, "little")], crc

    def decode_into(self, raw: memoryview, out: np.ndarray) -> str | None:
        """Verify and decode ``raw`` into ``out`` (a C-contiguous array of the chunk shape).

        Returns None on success, or the reason the chunk is corrupt.
        """
        body, reason = _verified_body(raw)
        if reason is not None:
            return reason
        target = out.data.cast("B")
        codec = self._numcodec()
        if codec is None:
            if len(body) != len(target):
                return f"chunk holds {len(body)} bytes, expected {len(target)}"
            target[:] = body
            return None
        try:
            codec.decode(body, out=target)
        except Exception as exc:  # numcodecs raises bare RuntimeError/ValueError
            return f"{self.compressor} decode failed: {exc}"
        return None

    def decode_view(self, raw: memoryview, dtype: np.dtype[Any], shape: tuple[int, ...],
                    scratch: bytearray | memoryview | None) -> np.ndarray | str:
        """Decode without a copy where possible (uncompressed chunks become a view of ``raw``).

        Returns the array, or the reason the chunk is corrupt.
        """
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if self.compressor == "none":
            if len(raw) != nbytes + _CRC_BYTES:
                return f"chunk holds {len(raw) - _CRC_BYTES} bytes, expected {nbytes}"
            body, reason = _verified_body(raw)
            return reason if reason is not None else np.frombuffer(body, dtype=dtype).reshape(shape)
        if scratch is None or len(scratch) < nbytes:
            out = np.empty(shape, dtype=dtype)
        else:
            out = np.frombuffer(memoryview(scratch)[:nbytes], dtype=dtype).reshape(shape)
        reason = self.decode_into(raw, out)
        return reason if reason is not None else out

    def zarr_codecs(self, itemsize: int) -> list[dict[str, Any]]:
        """The codec list of the array's zarr v3 metadata."""
        codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
        if self.compressor == "lz4":
            codecs.append({"name": "blosc", "configuration": {
                "typesize": itemsize, "cname": "lz4", "clevel": self.level,
                "shuffle": "shuffle", "blocksize": 0}})
        elif self.compressor == "zstd":
            codecs.append({"name": "zstd", "configuration": {"level": self.level,
                                                             "checksum": False}})
        codecs.append({"name": "crc32c"})
        return codecs


def codec_from_metadata(codecs: list[dict[str, Any]]) -> ChunkCodec | None:
    """The :class:`ChunkCodec` matching a zarr v3 codec list, or None if it is another one."""
    names = [c.get("name") for c in codecs]
    if not names or names[0] != "bytes" or names[-1] != "crc32c":
        return None
    if codecs[0].get("configuration", {}).get("endian", "little") != "little":
        return None
    middle = codecs[1:-1]
    if not middle:
        return ChunkCodec("none")
    if len(middle) != 1:
        return None
    conf = middle[0].get("configuration", {})
    if middle[0]["name"] == "blosc" and conf.get("cname") == "lz4":
        return ChunkCodec("lz4", int(conf.get("clevel", 1)))
    if middle[0]["name"] == "zstd" and not conf.get("checksum", False):
        return ChunkCodec("zstd", int(conf.get("level", 1)))
    return None


def choose_codec(codec: str, sample: np.ndarray) -> ChunkCodec:
    """Resolve ``codec`` ("auto", "none", "lz4", "zstd") to a :class:`ChunkCodec`.

    ``auto`` compresses a sample block with LZ4 and keeps compression only if it saves
    at least 15% of the bytes.
    """
    name = parse_option("codec", codec, _CHOICES)
    if name == "auto":
        if sample.size == 0:
            return ChunkCodec("none")
        trial = ChunkCodec("lz4").encode(sample)[0][0]
        return ChunkCodec("lz4") if len(trial) < 0.85 * sample.nbytes else ChunkCodec("none")
    return ChunkCodec(name)
