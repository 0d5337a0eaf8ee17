"""Real backends for tests and benchmarks: moto's server (aws), podman's Docker API (podman), a fake
Compute Engine API (gce), a private RabbitMQ node (rabbitmq). Each imports its SDK only when used."""
