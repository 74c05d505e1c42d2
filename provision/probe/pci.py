"""GPUs on the PCI bus, from sysfs: what is plugged in, whether or not a driver answers.

Each device directory under /sys/bus/pci/devices holds one-line hex files:

    vendor  0x10de
    device  0x2330
    class   0x030200
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from provision.probe.system import System

VENDOR_NVIDIA = 0x10DE
VENDOR_AMD = 0x1002
VENDOR_INTEL = 0x8086

# PCI base class 0x03 is "display controller"; subclass 0x00 VGA, 0x02 3D (headless compute cards).
DISPLAY_SUBCLASSES = (0x0300, 0x0302)


class PciDisplay(NamedTuple):
    address: str  # 0000:01:00.0
    vendor: int
    device: int | None


def parse_hex(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text.strip(), 16)
    except ValueError:
        return None


def is_display_controller(pci_class: int | None) -> bool:
    return pci_class is not None and (pci_class >> 8) in DISPLAY_SUBCLASSES


def display_controllers(system: System) -> list[PciDisplay]:
    """Display/3D controllers, sorted by PCI address. [] where there is no sysfs."""
    base = system.path("/sys/bus/pci/devices")
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        pci_class = parse_hex(_read(entry / "class"))
        if not is_display_controller(pci_class):
            continue
        vendor = parse_hex(_read(entry / "vendor"))
        if vendor is None:
            continue
        found.append(PciDisplay(entry.name, vendor, parse_hex(_read(entry / "device"))))
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
