"""Helpers shared by the test modules: one place for each.

serving.py       real servers: uvicorn in a thread, a server subprocess, free ports, waiting, transcript words
jobs_support.py  the local async endpoint: `koe serve` processes, moto S3, webhook receivers, waiting for jobs
media.py         audio and video encoded with PyAV (no ffmpeg binary)
moto_aws.py      a moto server for the deploy tests, and what moto lacks
deploy_world.py  the deploy tests' wide console and seeded account (bucket, model data, topics)
reliability.py   fault injection and the job table's integrity for the fault and load tests
"""
