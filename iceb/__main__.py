from iceb.cli import main

raise SystemExit(main())
