from coordinator._cli import main

raise SystemExit(main())
