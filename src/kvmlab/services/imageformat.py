"""What a downloaded or imported file is, and turning it into a storable image.

* :func:`detect_format` reads the magic bytes: qcow2, ISO 9660, a raw disk (a partition table
  or a file system), or an ``.xz``/``.gz`` stream; anything else (a text file, an HTML error
  page saved by mistake) is refused.
* :func:`prepare` decompresses streams and converts raw disks to qcow2 with ``qemu-img``.
"""

from __future__ import annotations

from pathlib import Path

from kvmlab import errors

CHUNK = 1 << 20


def detect_format(path: Path) -> str:
    """``qcow2``, ``iso``, ``raw`` (a disk with a partition table or file system), ``xz`` or
    ``gz`` from the file's magic bytes; :class:`InvalidInput` for anything else."""
    with path.open("rb") as f:
        head = f.read(64 * 1024 + 8)
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head[32769:32774] == b"CD001":
        return "iso"
    raw_marks = (
        head[510:512] == b"\x55\xaa",  # MBR (also the protective MBR of GPT)
        head[512:520] == b"EFI PART",  # GPT
        head[1080:1082] == b"\x53\xef",  # ext2/3/4 superblock
        head[:4] == b"XFSB",
        head[65600:65608] == b"_BHRfS_M",  # btrfs
    )
    if any(raw_marks):
        return "raw"
    raise errors.InvalidInput(
        f"{path.name} is not a disk image: no qcow2, ISO 9660, partition table or file "
        "system signature (and not .xz/.gz compressed)",
        hint="give a qcow2, raw disk or ISO image (an HTML page saved by mistake looks like this)",
    )


def prepare(path: Path, workdir: Path) -> tuple[Path, str]:
    """Turn a downloaded file into something to upload: ``(file, "qcow2" | "iso")``.

    Decompresses (streaming) and converts raw disks to qcow2 with ``qemu-img``; new files go
    into ``workdir``.
    """
    import gzip
    import lzma
    import shutil
    import subprocess

    fmt = detect_format(path)
    for _ in range(3):  # .qcow2.xz, .img.gz, ...
        if fmt not in ("xz", "gz"):
            break
        out = workdir / f"{path.name}.unpacked"
        opener = lzma.open if fmt == "xz" else gzip.open
        try:
            with opener(path, "rb") as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        except (lzma.LZMAError, OSError, EOFError) as e:
            raise errors.InvalidInput(f"{path.name} is a broken {fmt} stream: {e}") from e
        path = out
        fmt = detect_format(path)
    if fmt == "raw":
        out = workdir / f"{path.name}.qcow2"
        qemu_img = shutil.which("qemu-img")
        if qemu_img is None:
            raise errors.HostNotReady(
                "converting a raw disk needs qemu-img", hint="apt install qemu-utils"
            )
        result = subprocess.run(
            [qemu_img, "convert", "-f", "raw", "-O", "qcow2", "--", str(path), str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise errors.OperationFailed(f"qemu-img convert failed: {result.stderr.strip()}")
        return out, "qcow2"
    return path, fmt
