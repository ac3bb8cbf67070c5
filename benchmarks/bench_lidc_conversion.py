"""LIDC-IDRI conversion time per case with 1 and 2 worker processes, on copies of the real case.

Only one real LIDC case is available (../shared/data/lidc-idri), and one case cannot be split over
two processes, so the input is ``--copies`` renamed copies of it (PatientID ``LIDC-IDRI-9NNN``,
SeriesInstanceUID ending in ``9NNN`` in the DICOM headers and in the XML): real DICOM decoding,
XML parsing, consensus and NIfTI writing on every copy. Each configuration converts all copies into
a fresh dataset; seconds per case = wall time / copies, and CPU seconds (this process and its
workers) / copies. Also times ``--crop-lung`` (1 process).

    python benchmarks/bench_lidc_conversion.py [--copies 4] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc-idri"


def make_copies(source_series: Path, root: Path, copies: int) -> Path:
    """``copies`` renamed copies of one LIDC series (new patient id and series UID) under ``root``."""
    import pydicom

    xml = next(source_series.glob("*.xml"))
    xml_text = xml.read_text()
    for n in range(1, copies + 1):
        patient = f"LIDC-IDRI-9{n:03d}"
        target = root / patient / "study" / f"series{n}"
        target.mkdir(parents=True)
        series_uid = None
        for f in sorted(source_series.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            series_uid = series_uid or str(ds.SeriesInstanceUID)
            ds.PatientID = patient
            ds.SeriesInstanceUID = copy_uid = f"{series_uid[:-4]}9{n:03d}"  # same length (UIDs <= 64 chars)
            ds.save_as(target / f.name)
        (target / xml.name).write_text(xml_text.replace(f"<SeriesInstanceUid>{series_uid}<",
                                                        f"<SeriesInstanceUid>{copy_uid}<"))
    return root


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers once they are joined)."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def time_conversion(raw: Path, out: Path, dataset_id: int, processes: int,
                    crop_lung: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one conversion of every case under ``raw``."""
    from dataset_conversion.lidc_idri import convert_lidc_idri

    start, cpu = time.perf_counter(), _cpu_seconds()
    convert_lidc_idri(raw, dataset_id, output_root=out, num_processes=processes, crop_lung=crop_lung, progress=False)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="renamed copies of the real case to convert")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (the median is reported)")
    args = parser.parse_args()
    series = next(REAL.glob("LIDC-IDRI-0001/*/*"), None) if REAL.is_dir() else None
    if series is None:
        raise SystemExit(f"real LIDC case not found under {REAL}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = make_copies(series, tmp / "raw", args.copies)
        configurations = [("1 process", 1, False), ("2 processes", 2, False), ("1 process, --crop-lung", 1, True)]
        rows, dataset_id = [], 100
        for label, processes, crop in configurations:
            times, cpu = [], []
            for _ in range(args.repeats):
                dataset_id += 1
                wall, cpu_s = time_conversion(raw, tmp / "out", dataset_id, processes, crop)
                times.append(wall)
                cpu.append(cpu_s)
                shutil.rmtree(next((tmp / "out").glob(f"Dataset{dataset_id:03d}_*")))
            median = statistics.median(times)
            rows.append((label, median, median / args.copies, statistics.median(cpu) / args.copies,
                         ", ".join(f"{t:.1f}" for t in times)))
    print(f"cpu cores: {os.cpu_count()}, load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{args.copies} copies of LIDC-IDRI-0001 (133 slices, 512x512), median of {args.repeats} run(s)\n")
    print("| configuration | total wall (s) | wall per case (s) | CPU per case (s) | runs (s) |\n|---|---|---|---|---|")
    for label, total, per_case, cpu_per_case, runs in rows:
        print(f"| {label} | {total:.1f} | {per_case:.2f} | {cpu_per_case:.2f} | {runs} |")


if __name__ == "__main__":
    main()
