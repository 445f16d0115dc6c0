"""`make bench`: whole-process benchmarks of clipsearch against the CLIP README loop."""
