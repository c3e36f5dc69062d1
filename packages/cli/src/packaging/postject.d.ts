// postject ships no types; the one function the build calls.
declare module "postject" {
  export function inject(
    filename: string,
    resourceName: string,
    resourceData: Buffer,
    options?: {
      readonly sentinelFuse?: string
      readonly overwrite?: boolean
      readonly machoSegmentName?: string
    },
  ): Promise<void>
}
