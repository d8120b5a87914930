"""URLs of the model registry API, mounted under /api/v1/."""

from rest_framework.routers import SimpleRouter

from serving.api import ModelViewSet

router = SimpleRouter()
router.register("models", ModelViewSet, basename="model")
urlpatterns = router.urls
