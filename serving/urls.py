"""URLs of the model registry, deployments and batch jobs, mounted under /api/v1/."""

from rest_framework.routers import SimpleRouter

from serving.api import ModelViewSet
from serving.batch.api import BatchJobViewSet
from serving.deployments.api import DeploymentViewSet

router = SimpleRouter()
router.register("models", ModelViewSet, basename="model")
router.register("deployments", DeploymentViewSet, basename="deployment")
router.register("batch-jobs", BatchJobViewSet, basename="batch-job")
urlpatterns = router.urls
