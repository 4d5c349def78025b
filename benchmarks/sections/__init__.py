"""The sections of the benchmark report, one module each: measure (through the scripts beside this package),
then write the section's Markdown lines."""
