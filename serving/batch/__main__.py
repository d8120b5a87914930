import sys

from serving.batch.runner import main

sys.exit(main())
