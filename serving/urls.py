"""URLs of the model registry and the deployments API, mounted under /api/v1/."""

from rest_framework.routers import SimpleRouter

from serving.api import ModelViewSet
from serving.deployments.api import DeploymentViewSet

router = SimpleRouter()
router.register("models", ModelViewSet, basename="model")
router.register("deployments", DeploymentViewSet, basename="deployment")
urlpatterns = router.urls
