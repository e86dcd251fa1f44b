"""A C2SP tlog-witness: cosigns a log's checkpoints only while each extends the last one it cosigned."""
