"""The sample app's chaos load (stage 10a): `locust --headless -f sample_app/chaos/locustfile.py -H URL`.

Two visits of `/` for each liveliness probe, no think time: a short burst that finds a share of
failing answers or a slow P95. Locust counts a non-2xx answer as a failure."""
from locust import FastHttpUser, constant, task


class Visitor(FastHttpUser):
    wait_time = constant(0)

    @task(2)
    def home(self) -> None:
        self.client.get("/")

    @task(1)
    def liveliness(self) -> None:
        self.client.get("/health/liveliness")
