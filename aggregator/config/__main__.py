from aggregator.config.schema import main

raise SystemExit(main())
