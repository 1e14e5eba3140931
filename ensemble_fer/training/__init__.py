"""Stage 2: training one variant (data pipeline, schedule, resume), hyper-parameter search."""
