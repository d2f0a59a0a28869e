from deployments.serve import main

main()
