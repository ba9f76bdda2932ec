"""Files in formats the model store reads, written by the tests: GGUF headers and wheels."""

from pathlib import Path


def write_gguf(path: Path, metadata: dict, payload: bytes = b"") -> Path:
    """A GGUF file with ``metadata`` (str/int/float/bool/list-of-str values), no tensors, then ``payload``."""
    import struct

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    def value(item) -> bytes:
        if isinstance(item, bool):
            return struct.pack("<I?", 7, item)
        if isinstance(item, int):
            return struct.pack("<Iq", 11, item)
        if isinstance(item, float):
            return struct.pack("<Id", 12, item)
        if isinstance(item, list):
            return struct.pack("<IIQ", 9, 8, len(item)) + b"".join(string(s) for s in item)
        return struct.pack("<I", 8) + string(item)

    body = b"".join(string(k) + value(v) for k, v in metadata.items())
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata)) + body + payload)
    return path


def write_wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel of ``package`` holding ``members`` (path in archive -> bytes)."""
    import zipfile

    module = package.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = dict(members)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]).encode()
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel
