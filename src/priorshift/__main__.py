from priorshift.cli import main

raise SystemExit(main())
