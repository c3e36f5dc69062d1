import { layerMemory } from "../src/store/memory.ts"
import { storeContract } from "../src/testing/storeContract/index.ts"

storeContract("memory", layerMemory)
